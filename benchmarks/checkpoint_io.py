"""Size on disk, save time and restore time of a training checkpoint (the state,
the data position and the config), for a config's state after a few batches.

  python benchmarks/checkpoint_io.py --config=configs/quickstart.py --repeats=3

Prints one JSON object: bytes of each item, and the seconds of each save (until
written: the asynchronous write waited for) and each restore.
"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags
from ml_collections import config_flags

from sagan_jax import checkpoint, input_pipeline, logs
from sagan_jax.mesh import make_mesh
from sagan_jax.models import make_models
from sagan_jax.update import Update

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.')
flags.DEFINE_integer('repeats', 3, 'Saves and restores timed.')


def size(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv):
  del argv
  logs.quiet_console()
  config, mesh = FLAGS.config, make_mesh()
  data = input_pipeline.create_train_iterator(config, mesh)
  for _ in range(3):
    next(data)
  update = Update(config, *make_models(config), mesh)
  state = update.initial_state(config.seed)
  saves, restores = [], []
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoint.make_manager(workdir, config)
    for step in range(1, FLAGS.repeats + 1):
      start = time.perf_counter()
      checkpoint.save(manager, state.replace(step=state.step + step), data, config)
      manager.wait_until_finished()
      saves.append(time.perf_counter() - start)
      start = time.perf_counter()
      checkpoint.restore_for_training(manager, config, update.state_shapes(),
                                      data)
      restores.append(time.perf_counter() - start)
    directory = checkpoint.checkpoint_dir(workdir) / str(FLAGS.repeats)
    sizes = {item: size(directory / item) for item in ('state', 'data', 'meta')}
    sizes['step_directory'] = size(directory)  # the items and Orbax's own metadata
    manager.close()
  data.close()
  print(json.dumps({'bytes': sizes,
                    'save_s': [round(s, 3) for s in saves],
                    'restore_s': [round(s, 3) for s in restores]}, indent=1))


if __name__ == '__main__':
  app.run(main)
