"""One quickstart ablation: main.py with --config.* overrides, timed, then the
evaluation lines of its metrics.jsonl as one JSON row.

  python benchmarks/quickstart_ablation.py --name=ch16 -- --config.ch=16 --config.g_lr=4e-4

Appends {'name', 'overrides', 'train_minutes', 'evals': {step: {...}}} to
--out (default benchmarks/results/quickstart_ablations.jsonl). The run's
workdir is /tmp/ablation_NAME (removed first).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('class_accuracy', 'frechet_distance', 'diversity_vs_data', 'colour_diversity_vs_data')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--name', required=True)
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results',
                                                    'quickstart_ablations.jsonl'))
  parser.add_argument('overrides', nargs='*')
  args = parser.parse_args()
  workdir = f'/tmp/ablation_{args.name}'
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.time()
  subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'),
                  '--config=' + os.path.join(ROOT, 'configs', 'quickstart.py'),
                  f'--workdir={workdir}', *args.overrides], check=True,
                 stdout=subprocess.DEVNULL, stderr=open(workdir + '.log', 'w'))
  minutes = (time.time() - start) / 60
  evals = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      got = {f'{g}/{k}': round(row[f'eval/{g}/{k}'], 4) for g in ('ema', 'raw') for k in KEYS
             if f'eval/{g}/{k}' in row}
      if got:
        evals[row['step']] = got
  row = {'name': args.name, 'overrides': args.overrides, 'wall_minutes': round(minutes, 2),
         'evals': evals}
  with open(args.out, 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(json.dumps(row, indent=1))


if __name__ == '__main__':
  main()
