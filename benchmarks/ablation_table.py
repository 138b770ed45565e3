"""A markdown table of benchmarks/results/digits_ablations.jsonl (or another file of
quickstart_ablation.py rows): per setting (the name before '_s<seed>'), the mean and
the range over its seeds of each generator's metrics at the last evaluation, and the
floor's.

  python benchmarks/ablation_table.py [FILE]
"""
import collections
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = (('class_accuracy', 'class acc.', 100, '.1f'), ('frechet_distance', 'distance', 1, '.1f'),
           ('precision', 'precision', 1, '.2f'), ('recall', 'recall', 1, '.2f'),
           ('density', 'density', 1, '.2f'), ('coverage', 'coverage', 1, '.2f'))


def main(path):
  rows = [json.loads(line) for line in open(path)]
  settings = collections.defaultdict(list)
  for row in rows:
    settings[row['name'].rsplit('_s', 1)[0]].append(row)
  head = ' | '.join(f'{g} {title}' for g in ('EMA', 'raw') for _, title, _, _ in COLUMNS)
  print(f'| setting | seeds | {head} |')
  print('| --- ' * (2 + 2 * len(COLUMNS)) + '|')
  floor = rows[0]['floor']
  for name, runs in settings.items():
    last = [r['evals'][max(r['evals'], key=int)] for r in runs]
    cells = []
    for g in ('ema', 'raw'):
      for key, _, scale, fmt in COLUMNS:
        values = np.array([e[f'{g}/{key}'] for e in last]) * scale
        spread = f' ({values.min():{fmt}}-{values.max():{fmt}})' if len(values) > 1 else ''
        cells.append(f'{values.mean():{fmt}}{spread}')
    seeds = ','.join(sorted(r['name'].rsplit('_s', 1)[1] for r in runs))
    print(f'| {name} | {seeds} | ' + ' | '.join(cells) + ' |')
  cells = [f'{floor[key] * scale:{fmt}}' if key in floor else '' for key, _, scale, fmt in COLUMNS]
  print('| real digits (floor) | | ' + ' | '.join(cells) + ' | ' + ' | '.join([''] * len(COLUMNS))
        + ' |')


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else
       os.path.join(ROOT, 'benchmarks', 'results', 'digits_ablations.jsonl'))
