"""One quickstart ablation: main.py with --config.* overrides, timed, then the
evaluation lines of its metrics.jsonl as one JSON row.

  python benchmarks/quickstart_ablation.py --name=sn_linear_s0 \
      --out=benchmarks/results/digits_ablations.jsonl -- --config.cbn=sn_linear --config.seed=0

Appends {'name', 'config', 'overrides', 'wall_minutes', 'floor', 'evals': {step: {...}}}
to --out (default benchmarks/results/quickstart_ablations.jsonl). The run's workdir is
/tmp/ablation_NAME (removed first).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('class_accuracy', 'frechet_distance', 'precision', 'recall', 'density', 'coverage',
        'precision_per_class', 'recall_per_class', 'diversity_vs_data',
        'colour_diversity_vs_data')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--name', required=True)
  parser.add_argument('--config', default='quickstart', help='a file of configs/, no .py')
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results',
                                                    'quickstart_ablations.jsonl'))
  parser.add_argument('overrides', nargs='*')
  args = parser.parse_args()
  workdir = f'/tmp/ablation_{args.name}'
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'),
                  '--config=' + os.path.join(ROOT, 'configs', args.config + '.py'),
                  f'--workdir={workdir}', *args.overrides], check=True,
                 stdout=subprocess.DEVNULL, stderr=open(workdir + '.log', 'w'))
  minutes = (time.time() - start) / 60
  floor = {}
  with open(workdir + '.log') as f:  # the floor's line: "Evaluation floor (...) | k v k v ..."
    for line in f:
      if 'Evaluation floor' in line:
        words = line.split(' | ', 1)[1].split()
        floor = {k: float(v) for k, v in zip(words[::2], words[1::2]) if k in KEYS}
  evals = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      got = {f'{g}/{k}': round(row[f'eval/{g}/{k}'], 4) for g in ('ema', 'raw') for k in KEYS
             if f'eval/{g}/{k}' in row}
      if got:
        evals[row['step']] = got
  row = {'name': args.name, 'config': args.config, 'overrides': args.overrides,
         'wall_minutes': round(minutes, 2), 'floor': floor, 'evals': evals}
  with open(args.out, 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(json.dumps(row, indent=1))


if __name__ == '__main__':
  main()
