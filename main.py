"""Trains SAGAN, or looks at a trained one. Examples:

  python main.py --config=configs/quickstart.py --workdir=/tmp/sagan
  python main.py --config=configs/imagenet128.py --workdir=... --config.batch_size=64
  python main.py --mode=sample --workdir=/tmp/sagan --classes=0,3 --truncation=1.0
  python main.py --mode=sample --workdir=/tmp/sagan --export_samples=50000 --format=npz
  python main.py --mode=interpolate --workdir=/tmp/sagan
  python main.py --mode=attention --workdir=/tmp/sagan --queries='8,8;24,16'
  python main.py --mode=eval --workdir=/tmp/sagan --eval_samples=10000
  python main.py --mode=reference --config=configs/imagenet128.py --workdir=... \
      --config.reference_dir=gs://BUCKET/ref --features=inception --inception_weights=...
  python main.py --mode=compile --config=configs/imagenet128.py --topology=v5e-256 \
      --config.dtype=bfloat16 --max_batch --out=/tmp/compile

The sample, interpolate, attention and eval modes read the config from the checkpoint;
the reference mode fills a config's reference statistics ahead of its runs; the compile
mode compiles a config's programs for a TPU slice, on any machine (no TPU needed).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sagan_jax import options

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for samples, metrics and checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (auto-detects Cloud TPU pods, SLURM, ...).')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for a multi-process run started by hand.')
flags.DEFINE_integer('num_processes', None, 'Process count, with --coordinator_address.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_integer('heartbeat_timeout', 100, 'Seconds without word from a process after '
                     'which the others of a multi-process run stop (it died).')
flags.DEFINE_bool('compilation_cache', True,
                  'Keep compiled programs in WORKDIR/compilation_cache (unless '
                  'JAX_COMPILATION_CACHE_DIR is set), so that a restart skips compiling.')
flags.DEFINE_bool('verbose', False, "Also every library's INFO and WARNING lines (Orbax, JAX, "
                  'TensorFlow); by default only this program\'s lines and errors.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'sample', 'interpolate', 'attention', 'eval', 'reference', 'compile'],
                  'train; look at the latest (or --checkpoint_step) checkpoint in --workdir; '
                  'fill the reference statistics of --config (config.reference_dir, else '
                  'WORKDIR/reference_stats); or compile --config for the TPU slice --topology.')
options.define_flags()  # the options of the other modes


# Process counts that cluster launchers put in the environment of each process.
LAUNCHER_COUNTS = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def launcher_process_count() -> tuple[str, int] | None:
  """(variable, count) if a launcher started this process as one of several."""
  for name in LAUNCHER_COUNTS:
    if os.environ.get(name, '').isdigit() and int(os.environ[name]) > 1:
      return name, int(os.environ[name])
  return None


def parse_flags(argv):
  """absl's parser, with every mistake on the command line reported in one line
  that says what to do, before anything is imported or compiled: a misspelt
  flag or --config.FIELD, a bad value, a missing --workdir, a config file that
  does not load, and an option that the chosen mode does not take."""
  from sagan_jax.config import ConfigError, check_field_names
  overrides = [a[len('--config.'):].split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  try:
    check_field_names(overrides)
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    if overrides and not any(a.startswith('--config=') for a in argv):
      sys.exit('Command-line error: --config.FIELD overrides a field of --config=FILE, which '
               'only training takes; the sample, interpolate, attention and eval modes read '
               'the config from the checkpoint in --workdir')
    sys.exit(f'Command-line error: {e} (python main.py --helpfull lists the flags)')
  if FLAGS.workdir is None and FLAGS.mode != 'compile':
    sys.exit('Command-line error: --workdir is required: the directory of checkpoints, '
             'samples and metrics, e.g. --workdir=/tmp/sagan_quickstart')
  if FLAGS['config'].present:
    try:
      FLAGS.config.keys()  # ml_collections reports a file that did not load only on use
    except OSError as e:
      reason = str(e).strip().splitlines()[-1].strip()
      sys.exit(f'Config error: --config={FLAGS["config"].config_filename} does not load: '
               f'{reason}. Give a file of configs/, e.g. --config=configs/quickstart.py')
  launched = launcher_process_count()
  if launched and not (FLAGS.distributed or FLAGS.coordinator_address):
    name, count = launched
    sys.exit(f'Command-line error: this process is one of {count} ({name}={os.environ[name]}) '
             'but would run alone: add --distributed so that they train as one job')
  given = [name for name in options.NAMES if FLAGS[name].present]
  if FLAGS.mode == 'train' and given:
    sys.exit(f'Command-line error: --{given[0]} is an option of the sample, interpolate, '
             f'attention, eval and reference modes, not of training (choose one with --mode, '
             f'or set training\'s own fields with --config.FIELD)')
  own = {'reference': options.REFERENCE, 'compile': options.COMPILE}.get(FLAGS.mode)
  if own:
    if not FLAGS['config'].present:
      sys.exit(f'Command-line error: --mode={FLAGS.mode} needs the --config of the runs it is '
               'for, e.g. --config=configs/imagenet128.py')
    if other := [name for name in given if name not in own]:
      sys.exit(f'Command-line error: --mode={FLAGS.mode} takes --{", --".join(own)}, not '
               f'--{other[0]}')
    if FLAGS.mode == 'compile' and not FLAGS.topology:
      sys.exit('Command-line error: --mode=compile needs --topology, the slice to compile for, '
               'e.g. --topology=v5e-16 (v4-N, v5e-N, v5p-N or v6e-N)')
  elif FLAGS.mode != 'train' and (FLAGS['config'].present or overrides):
    sys.exit(f'Command-line error: --mode={FLAGS.mode} reads the config from the checkpoint in '
             f'--workdir; leave out --config and --config.FIELD (the mode\'s own options are '
             f'listed by python main.py --helpfull)')
  return rest


def run_mode(mode: str) -> None:
  if mode == 'compile':
    from sagan_jax import aot, chips
    out = FLAGS.out or (f'{FLAGS.workdir}/compile' if FLAGS.workdir else '')
    aot.compile_for_slice(FLAGS.config, chips.parse(FLAGS.topology, FLAGS.num_slices), out,
                          FLAGS.max_batch, FLAGS.compile_evaluation)
    return
  from sagan_jax import modes
  if mode == 'reference':
    written = modes.reference(FLAGS.config, FLAGS.workdir, options.from_flags())
  else:
    written = modes.RUN[mode](FLAGS.workdir, options.from_flags())
  paths = written[0] if mode == 'attention' else written
  for path in paths:
    logging.info('Wrote %s', path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from sagan_jax import logs
  if not FLAGS.verbose:
    logs.quiet_console()
  import jax
  if FLAGS.mode == 'compile':  # for a TPU slice that is not here: only the compiler's devices
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    jax.config.update('jax_platforms', 'cpu')
  from sagan_jax import train
  from sagan_jax.checkpoint import CheckpointError
  from sagan_jax.chips import SliceError
  from sagan_jax.config import ConfigError, validate
  from sagan_jax.input_pipeline import DataError
  from sagan_jax.modes import ModeError

  if FLAGS.compilation_cache and FLAGS.workdir and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', f'{FLAGS.workdir}/compilation_cache')
  if FLAGS.mode == 'train' and FLAGS.config is not None:
    from sagan_jax.mesh import use_cpu_cores
    use_cpu_cores(FLAGS.config.batch_size // max(FLAGS.num_processes or 1, 1))
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # progress is logged by process 0
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    if FLAGS.mode == 'train':
      if FLAGS.config is None:
        raise ConfigError('--config is required to train, e.g. --config=configs/quickstart.py')
      validate(FLAGS.config, jax.device_count(), jax.process_count())  # before TensorFlow
    # TensorFlow (~7 s of CPU to import) is needed for gs:// paths (epath's gfile) and to
    # prepare a TFDS dataset (input_pipeline imports it then); nothing else uses it.
    values = [FLAGS[name].value for name in FLAGS] + list((FLAGS.config or {}).values())
    remote = any(isinstance(value, str) and '://' in value for value in values)
    if remote and not FLAGS.verbose:
      logs.import_tensorflow_quietly()
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      run_mode(FLAGS.mode)
  except ModeError as e:
    sys.exit(f'Error: {e}')
  except SliceError as e:
    sys.exit(f'Compile error: {e}')
  except ConfigError as e:
    sys.exit(f'Config error: {e}')
  except DataError as e:
    sys.exit(f'Data error: {e}')
  except CheckpointError as e:
    sys.exit(f'Checkpoint error: {e}')
  except train.NonFiniteError as e:
    sys.exit(f'Training stopped: {e}')
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A collective failed: another process of the run died. Say so in one line and leave
    # at once, without the distributed shutdown (its barrier would wait for the dead
    # process, then abort with pages of logs). A partial checkpoint is cleaned up on restart.
    reason = str(e).strip().splitlines()[0][:200]
    print(f'Training stopped: process {jax.process_index()} lost another process of this run '
          f'({reason}). Restart the job: it resumes from the last complete checkpoint.',
          file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
