#!/usr/bin/env bash
# Issue 32's measurement: configs/quickstart.py on the real digits, 1,000 steps, one
# setting per line below, seeds 0 1 2 (interleaved), evaluated at the end with the
# shipped digits classifier. Rows go to benchmarks/results/digits_ablations.jsonl.
#   bash benchmarks/digits_ablations.sh [SETTING ...]   (default: all, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A SETTINGS=(
  [base]=''
  [sn_linear]='--config.cbn=sn_linear'
  [studiogan]='--config.cbn=sn_linear --config.init=orthogonal --config.bn_eps=1e-4 --config.bn_momentum=0.9 --config.state_updates=every_call --config.adam_eps=1e-6 --config.sn_eps=1e-6 --config.d_shortcut_relu=True'
  [bn_fast]='--config.bn_eps=1e-4 --config.bn_momentum=0.9'
  [every_call]='--config.state_updates=every_call'
  [orthogonal]='--config.init=orthogonal'
  [sn_linear_orthogonal]='--config.cbn=sn_linear --config.init=orthogonal'
  [adam_eps]='--config.adam_eps=1e-6'
  [sn_eps]='--config.sn_eps=1e-6'
  [shortcut_relu]='--config.d_shortcut_relu=True'
)
names=("${@:-base sn_linear studiogan}")
read -r -a names <<< "${names[*]}"
SEEDS=${SEEDS:-0 1 2}
for seed in $SEEDS; do
  for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    python benchmarks/quickstart_ablation.py --name="${name}_s${seed}" \
        --out="${OUT:-benchmarks/results/digits_ablations.jsonl}" -- ${SETTINGS[$name]} \
        --config.seed="$seed" --config.eval_every_steps=1000 --config.sample_every_steps=1000 \
        --config.checkpoint_every_steps=1000 > /dev/null
    echo "$(date +%T) done ${name}_s${seed}"
  done
done
