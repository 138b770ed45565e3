"""Test set-up: 8 simulated CPU devices and shared tiny models (compiled once)."""
import atexit
import os
import shutil
import tempfile

from processes import TEST_XLA_FLAGS  # (no jax import there)

_flags = os.environ.get('XLA_FLAGS', '').split()
os.environ['XLA_FLAGS'] = ' '.join(_flags + [f for f in ('--xla_force_host_platform_device_count=8',
                                                       *TEST_XLA_FLAGS) if f not in _flags])
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The CPU only: with libtpu installed (requirements-tpu.txt, for the compile tests), JAX
# would also try to start a TPU here and warn that there is none. The compile tests build
# their TPU devices from the compiler, which needs no TPU backend.
os.environ['JAX_PLATFORMS'] = 'cpu'
# One compilation cache for the session, inherited by the processes tests start:
# a program compiled by one test (or process) is loaded, not compiled, by the next.
# pytest-xdist's workers inherit the directory of the process that started them.
if 'SAGAN_JAX_TEST_CACHE' not in os.environ:
  os.environ['SAGAN_JAX_TEST_CACHE'] = tempfile.mkdtemp(prefix='sagan_jax_test_cache_')
  atexit.register(shutil.rmtree, os.environ['SAGAN_JAX_TEST_CACHE'], ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=os.environ['SAGAN_JAX_TEST_CACHE'],
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')

import jax
import numpy as np
import pytest

from sagan_jax import train
from sagan_jax.models import make_models
from sagan_jax.update import Update
from tiny_config import shapes_config, tiny_config


class Tiny:
  """A tiny config, its models and mesh, and the compiled train step."""

  def __init__(self):
    self.config = tiny_config()
    self.mesh = train.make_mesh()
    self.generator, self.discriminator = make_models(self.config)
    self.update = Update(self.config, self.generator, self.discriminator, self.mesh)
    self.train_step = self.update.jitted()

  def new_state(self, seed=0):
    return self.update.initial_state(seed)

  def batch(self, seed=0):
    """A random uint8 batch [num_d_steps, B, 32, 32, 3] on the mesh."""
    rng = np.random.default_rng(seed)
    c = self.config
    batch = {'image': rng.integers(0, 256, (c.num_d_steps, c.batch_size, 32, 32, 3), np.uint8),
             'label': rng.integers(0, c.num_classes, (c.num_d_steps, c.batch_size), np.int32)}
    return train.shard_batch(batch, self.mesh)


@pytest.fixture(scope='session')
def tiny():
  return Tiny()


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory, worker_id):
  """A TFDS data dir in which each embedded dataset gets prepared once, shared by the
  pytest-xdist workers (two that prepare one at once each write their own copy, and the
  second rename finds the first's: input_pipeline._prepare)."""
  root = tmp_path_factory.getbasetemp()
  path = (root if worker_id == 'master' else root.parent) / 'tensorflow_datasets'
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope='session')
def runs(tfds_dir, tmp_path_factory):
  """4 steps straight, and 2 steps, a stop, then a resume to 4 (checkpoints every 2)."""
  straight, split = (str(tmp_path_factory.mktemp(n)) for n in ('straight', 'split'))
  config = lambda steps: shapes_config(tfds_dir, num_train_steps=steps, checkpoint_every_steps=2)
  straight_state = train.train_and_evaluate(config(4), straight)
  assert int(train.train_and_evaluate(config(2), split).step) == 2
  return straight, split, straight_state, train.train_and_evaluate(config(4), split)


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: a long end-to-end run; -m "not slow" leaves it out '
                          'locally, CI runs it')


# The test files that take longest (CPU seconds in the suite, 2026-12-03: the pods ~400,
# the files of the `runs` fixture together ~400, the learning test ~170, main ~140, ...;
# the accelerator check's ~125 alone since it trains 400 steps), longest first; the others
# follow.
LONGEST_FILES = ('test_pod.py', 'test_accelerator_check.py', 'test_checkpoint.py',
                 'test_evaluation.py', 'test_accumulation.py', 'test_gcs.py', 'test_learning.py',
                 'test_main.py', 'test_parallel.py', 'test_data.py')
# The files that use the session's `runs` fixture (three tiny trainings): one unit of work
# for one pytest-xdist worker, so that the fixture is made once, not on both workers.
RUNS_FILES = ('test_checkpoint.py', 'test_evaluation.py', 'test_accumulation.py', 'test_gcs.py')


def pytest_collection_modifyitems(items):
  """The longest files first, each file's tests together and in their order. pytest.ini
  has pytest-xdist hand a worker a whole file at a time as it runs short of work: the
  short files fill in at the end instead of the session ending on one long file alone."""
  rank = lambda item: (LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES
                       else len(LONGEST_FILES))
  items.sort(key=rank)  # (a stable sort)


def pytest_xdist_make_scheduler(config, log):
  """pytest.ini's whole files per worker (--dist loadfile), RUNS_FILES as one unit."""
  from xdist.scheduler import LoadFileScheduling

  class Scheduling(LoadFileScheduling):
    def _split_scope(self, nodeid):
      scope = super()._split_scope(nodeid)
      return 'runs' if os.path.basename(scope) in RUNS_FILES else scope
  return Scheduling(config, log)
