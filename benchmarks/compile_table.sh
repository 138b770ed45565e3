#!/usr/bin/env bash
# The pod table of docs/pods.md and BENCHMARKS.md: each row is main.py --mode=compile for one
# Cloud TPU slice, compiled on this machine by the TPU compiler (no TPU), its JSON in
# benchmarks/results/compile/ and its wall time in benchmarks/results/compile/times.txt.
# Then: python benchmarks/compile_table.py renders the table. The train step only (the
# evaluation's programs are the same on every slice: the v5e-16 row compiled them, by
#   python main.py --mode=compile --config=configs/imagenet128.py --topology=v5e-16 \
#       --config.dtype=bfloat16 --max_batch --out=benchmarks/results/compile
# ). About 3 minutes per compile on 2 cores: run it in the background.
#   bash benchmarks/compile_table.sh                 # every row
#   bash benchmarks/compile_table.sh "imagenet128:v5e-16:bfloat16:False:--max_batch"
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/compile
mkdir -p "$out"
rows=${1:-"imagenet128:v4-8:bfloat16:False:--max_batch
imagenet128:v5p-8:bfloat16:False:--max_batch imagenet128:v6e-8:bfloat16:False:--max_batch
imagenet128:v5e-64:bfloat16:False:--max_batch imagenet128:v5e-256:bfloat16:False:
imagenet128:v5p-128:bfloat16:False: imagenet128:v6e-256:bfloat16:False:
imagenet128:v5e-16:float32:False: imagenet128:v4-8:float32:False:
imagenet128:v5e-16:bfloat16:True: imagenet128:v4-8:bfloat16:True: cifar10:v5e-8:float32:False:
imagenet128:v5e-16:bfloat16:False:"}
for row in $rows; do
  IFS=: read -r config topology dtype remat extra <<< "$row"
  start=$(date +%s)
  python main.py --mode=compile --config="configs/$config.py" --topology="$topology" \
      --config.dtype="$dtype" --config.remat="$remat" --nocompile_evaluation $extra --out="$out" \
      > "$out/log_${config}_${topology}_${dtype}_remat${remat}.txt" 2>&1 || echo "failed: $row"
  echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $row $(( $(date +%s) - start )) s" \
      | tee -a "$out/times.txt"
done
