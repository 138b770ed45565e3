"""Which EMA of G's weights a short run should keep: one training run, several EMAs.

  python benchmarks/ema_study.py --config=configs/quickstart.py --config.seed=0 \
      --out=benchmarks/results/ema_study.jsonl
  python benchmarks/ema_study.py --table=benchmarks/results/ema_study.jsonl[,MORE.jsonl]

The EMA does not feed back into training, so one run can keep every candidate at once:
the run is main.py's (same update, data and seed), and after its last step each
candidate (decay, first step) is evaluated as main.py evaluates the EMA G (its own
standing BN statistics, the shipped classifier, config.eval_num_samples samples),
beside the raw G with its moving averages ('raw') and with standing statistics
('raw_standing': what the statistics alone change). Appends one JSON row per run.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('out', 'benchmarks/results/ema_study.jsonl', 'Append the row here.')
flags.DEFINE_list('table', None, 'Print the table of these files\' rows (the generators '
                  'that every row has) and stop.')
flags.DEFINE_list('candidates', ['0.99@800', '0.99@600', '0.995@500', '0.98@850', '0.95@900',
                                 '0.9@950', '0.999@0'], 'EMAs as DECAY@FIRST_STEP.')
KEYS = ('class_accuracy', 'frechet_distance', 'precision', 'recall', 'density', 'coverage')


def table(paths):
  rows = [json.loads(line) for path in paths for line in open(path)]
  names = [n for n in rows[0]['results'] if all(n in r['results'] for r in rows)]
  print(f'{len(rows)} runs, seeds {sorted(r["seed"] for r in rows)}: mean (min-max)\n')
  print('| G | ' + ' | '.join(KEYS) + ' |\n|' + ' --- |' * (len(KEYS) + 1))
  for name in names:
    cells = []
    for k in KEYS:
      v = np.array([r['results'][name][k] for r in rows])
      v, f = (v * 100, '.1f') if k == 'class_accuracy' else (v, '.2f')
      cells.append(f'{v.mean():{f}} ({v.min():{f}}-{v.max():{f}})')
    print(f'| {name} | ' + ' | '.join(cells) + ' |')


def main(argv):
  del argv
  if FLAGS.table:
    return table(FLAGS.table)
  from sagan_jax import evaluation, input_pipeline, memory, sampling
  from sagan_jax.config import validate
  from sagan_jax.mesh import make_mesh, use_cpu_cores
  from sagan_jax.train import shard_batch
  from sagan_jax.train_state import generator_variables
  from sagan_jax.update import make_update

  config = FLAGS.config
  use_cpu_cores(config.batch_size)  # as main.py does
  validate(config, jax.device_count(), jax.process_count())
  mesh = make_mesh()
  data = input_pipeline.create_train_iterator(config, mesh)
  update = make_update(config, mesh)
  state = update.initial_state(config.seed)
  train_step, _ = memory.compile_step(update)
  sampler = sampling.ImageSampler(update.generator, mesh)
  evaluator = evaluation.Evaluator(config, mesh, f'/tmp/ema_study_{config.seed}', sampler)
  candidates = [(float(d), int(s)) for d, s in (c.split('@') for c in FLAGS.candidates)]
  mix = jax.jit(lambda ema, p, d: jax.tree.map(lambda e, x: d * e + (1 - d) * x, ema, p))
  emas = [jax.tree.map(jnp.copy, state.g_params) for _ in candidates]  # the step donates
  start = time.time()
  for step in range(config.num_train_steps):
    state, _ = train_step(state, shard_batch(next(data), mesh))
    emas = [mix(e, state.g_params, d if step >= first else 0.0)
            for e, (d, first) in zip(emas, candidates)]
  jax.block_until_ready(emas)
  train_s = time.time() - start
  standing = sampling.StandingStatistics(config, update.generator, mesh, config.ema_bn_batches,
                                         config.batch_size)
  key = sampling.ema_statistics_key(config.seed, config.num_train_steps)
  raw = generator_variables(state, ema=False)
  generators = {'raw': raw, 'raw_standing': standing(raw, key)}
  for ema, (d, first) in zip(emas, candidates):
    generators[f'ema {d}@{first}'] = standing(dict(raw, params=ema), key)
  results = evaluator(generators)
  row = {'seed': config.seed, 'steps': config.num_train_steps, 'train_s': round(train_s, 1),
         'results': {name: {k: round(float(results[f'eval/{name}/{k}']), 4) for k in KEYS}
                     for name in generators}}
  with open(FLAGS.out, 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(json.dumps(row, indent=1))


if __name__ == '__main__':
  app.run(main)
