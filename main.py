"""Trains SAGAN. Example:

  python main.py --config=configs/quickstart.py --workdir=/tmp/sagan
  python main.py --config=configs/imagenet128.py --workdir=... --config.batch_size=64
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for samples, metrics and checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (auto-detects Cloud TPU pods, SLURM, ...).')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for a multi-process run started by hand.')
flags.DEFINE_integer('num_processes', None, 'Process count, with --coordinator_address.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_bool('compilation_cache', True,
                  'Keep compiled programs in WORKDIR/compilation_cache (unless '
                  'JAX_COMPILATION_CACHE_DIR is set), so that a restart skips compiling.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parser, after a check that every --config.FIELD override names a field."""
  from sagan_jax.config import ConfigError, check_field_names
  overrides = [a[len('--config.'):].split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  try:
    check_field_names(overrides)
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  return FLAGS(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import jax
  from sagan_jax import train
  from sagan_jax.checkpoint import CheckpointError
  from sagan_jax.config import ConfigError
  from sagan_jax.input_pipeline import DataError

  if FLAGS.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', f'{FLAGS.workdir}/compilation_cache')
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # progress is logged by process 0
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  except DataError as e:
    sys.exit(f'Data error: {e}')
  except CheckpointError as e:
    sys.exit(f'Checkpoint error: {e}')
  except train.NonFiniteError as e:
    sys.exit(f'Training stopped: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
