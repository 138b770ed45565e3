"""One process of a multi-process CPU run (see test_parallel.py).

Usage: python multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES [GRAD_ACCUMULATION]
Prints one JSON line: a digest of this process's copy of the replicated state
after 3 train steps, and the last metrics.
"""
import hashlib
import json
import sys

import jax
import numpy as np

from sagan_jax import train
from sagan_jax.models import make_models
from sagan_jax.update import Update
from tiny_config import tiny_config


def main(port, process_id, num_processes, grad_accumulation=1):
  jax.distributed.initialize(f'localhost:{port}', num_processes, process_id)
  config = tiny_config(grad_accumulation=grad_accumulation, num_d_steps=1)  # a smaller program
  mesh = train.make_mesh()
  generator, discriminator = make_models(config)
  update = Update(config, generator, discriminator, mesh)
  state, step = update.initial_state(0), update.jitted()
  rng = np.random.default_rng(0)
  per_process = config.batch_size // num_processes
  mine = slice(process_id * per_process, (process_id + 1) * per_process)
  for _ in range(3):
    shape = (config.num_d_steps, config.batch_size)
    batch = {'image': rng.integers(0, 256, shape + (32, 32, 3), np.uint8),
             'label': rng.integers(0, config.num_classes, shape, np.int32)}
    state, metrics = step(state, train.shard_batch({k: v[:, mine] for k, v in batch.items()},
                                                   mesh))
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    copies = [np.asarray(shard.data) for shard in leaf.addressable_shards]
    assert all(np.array_equal(copies[0], c) for c in copies[1:])  # replicas agree locally
    digest.update(copies[0].tobytes())
  print(json.dumps({'digest': digest.hexdigest(), 'devices': jax.device_count(),
                    'metrics': {k: float(v) for k, v in metrics.items()}}), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(*map(int, sys.argv[1:]))
