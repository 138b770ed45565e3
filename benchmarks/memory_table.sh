#!/usr/bin/env bash
# XLA's memory estimate of the ImageNet-128 train step at the paper's batch of 256 on ONE
# device, per dtype, gradient accumulation K and remat, compiled (not run) on this CPU as
# a GPU runs it (attention 'xla', resampling 'separate'). One JSON line per setting in
# benchmarks/results/memory_imagenet128_b256.jsonl. About 80 s per setting on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/memory_imagenet128_b256.jsonl
for dtype in float32 bfloat16; do
  for k in 1 2 4; do
    for remat in False True; do
      JAX_NUM_CPU_DEVICES=1 python benchmarks/train_step.py --config=configs/imagenet128.py \
          --compile_only --config.batch_size=256 --config.dtype=$dtype \
          --config.grad_accumulation=$k --config.remat=$remat --config.attention_impl=xla \
          --config.resampling=separate 2>/dev/null | python -c \
          'import json, sys; print(json.dumps(json.load(sys.stdin)))' >> "$out"
      echo "$(date +%T) $dtype K=$k remat=$remat"
    done
  done
done
