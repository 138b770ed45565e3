#!/usr/bin/env bash
# XLA's memory estimate of the ImageNet-128 train step at the paper's batch of 256 on ONE
# device, compiled (not run) on this CPU: per gradient accumulation K and remat, with the
# attention as a GPU's XLA path runs it ('xla': the [B, 4096, 1024] weights in memory) and
# as flash attention does ('blocked': 256 queries at a time, weights recomputed in the
# backward; the CPU's stand-in for cuDNN's kernel), resampling as written ('separate').
# One JSON line per setting in benchmarks/results/memory_imagenet128_b256.jsonl; about
# 80 s each on 2 cores. (bfloat16 is not in the table: XLA's CPU backend computes most
# bf16 ops in float32, so its estimate says nothing of a GPU's.)
#   bash benchmarks/memory_table.sh "xla:1:False xla:2:False ..."   (attention:K:remat)
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/memory_imagenet128_b256.jsonl
settings=${1:-"xla:1:False xla:1:True xla:2:False xla:2:True xla:4:False xla:4:True blocked:1:False blocked:1:True blocked:2:False blocked:4:False"}
for setting in $settings; do
  IFS=: read -r attention k remat <<< "$setting"
  JAX_NUM_CPU_DEVICES=1 python benchmarks/train_step.py --config=configs/imagenet128.py \
      --compile_only --config.batch_size=256 --config.grad_accumulation="$k" \
      --config.remat="$remat" --config.attention_impl="$attention" \
      --config.resampling=separate 2>/dev/null | python -c \
      'import json, sys; print(json.dumps(json.load(sys.stdin)))' >> "$out"
  echo "$(date +%T) $setting"
done
