#!/usr/bin/env bash
# Issue 32's measurement: the digits quickstart model, 1,000 steps, evaluated at the end
# with the shipped digits classifier. 'base' is the authors' code (every field below at
# the authors' value; bn_momentum 0.99, the first digits quickstart's); each other setting
# changes only its fields; 'studiogan' is configs/quickstart.py itself (all seven changes);
# 'studiogan_once' all but state_updates (one D call, u once per step: the faster step).
# Seeds run in the outer loop, so a partial run has every setting at the first seeds.
#   SEEDS="0 1 2" OUT=rows.jsonl bash benchmarks/digits_ablations.sh [SETTING ...]
# Rows go to $OUT (default benchmarks/results/digits_ablations.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A BASE=([cbn]=tables [init]=xavier [bn_eps]=1e-5 [bn_momentum]=0.99
                 [state_updates]=once [adam_eps]=1e-8 [sn_eps]=1e-12 [d_shortcut_relu]=False)
declare -A SETTINGS=(
  [base]=''
  [sn_linear]='cbn=sn_linear'
  [bn_fast]='bn_eps=1e-4 bn_momentum=0.9'
  [every_call]='state_updates=every_call'
  [orthogonal]='init=orthogonal'
  [sn_linear_orthogonal]='cbn=sn_linear init=orthogonal'
  [adam_eps]='adam_eps=1e-6'
  [sn_eps]='sn_eps=1e-6'
  [shortcut_relu]='d_shortcut_relu=True'
  [studiogan]='cbn=sn_linear init=orthogonal bn_eps=1e-4 bn_momentum=0.9 state_updates=every_call adam_eps=1e-6 sn_eps=1e-6 d_shortcut_relu=True'
  [studiogan_once]='cbn=sn_linear init=orthogonal bn_eps=1e-4 bn_momentum=0.9 adam_eps=1e-6 sn_eps=1e-6 d_shortcut_relu=True'
)
overrides() {  # the --config.* flags of setting $1: BASE with the setting's fields replaced
  declare -A fields
  local key pair
  for key in "${!BASE[@]}"; do fields[$key]=${BASE[$key]}; done
  for pair in ${SETTINGS[$1]}; do fields[${pair%%=*}]=${pair#*=}; done
  for key in $(printf '%s\n' "${!fields[@]}" | sort); do echo "--config.$key=${fields[$key]}"; done
}
names=("${@:-base sn_linear studiogan}")
read -r -a names <<< "${names[*]}"
for seed in ${SEEDS:-0 1 2}; do
  for name in "${names[@]}"; do
    [[ -v SETTINGS[$name] ]] || { echo "unknown setting $name: one of ${!SETTINGS[*]}"; exit 2; }
    # shellcheck disable=SC2046
    python benchmarks/quickstart_ablation.py --name="${name}_s${seed}" \
        --out="${OUT:-benchmarks/results/digits_ablations.jsonl}" -- $(overrides "$name") \
        --config.seed="$seed" --config.eval_every_steps=1000 --config.sample_every_steps=1000 \
        --config.checkpoint_every_steps=1000 > /dev/null
    echo "$(date +%T) done ${name}_s${seed}"
  done
done
