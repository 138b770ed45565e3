"""main.py, for test_gcs: gs:// is the local emulator that the test started.

Two redirections, both for the emulator's sake (the project's code is unchanged):
- epath sends gs:// to TensorFlow's gfile when TensorFlow is installed, and gfile has no
  setting for another endpoint. Here epath uses gcsfs, which honours STORAGE_EMULATOR_HOST.
  Orbax's arrays (tensorstore) and ArrayRecord's reads (Riegeli) reach the emulator
  through their own variables, which the test sets.
- TensorBoard's event files are written by TensorFlow's gfile too: they go to the same
  path under the local directory $GCS_TEST_LOCAL.
"""
import os
import runpy
import sys
from unittest import mock

from clu import metric_writers
from etils import epath
from etils.epath import gpath

from sagan_jax import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local(path) -> str:
  path = os.fspath(path)
  assert path.startswith('gs://'), f'TensorBoard was given {path}, not the gs:// workdir'
  return os.path.join(os.environ['GCS_TEST_LOCAL'], path[len('gs://'):])


if __name__ == '__main__':
  summary_writer, start_session = metric_writers.SummaryWriter, logs._start_session
  with mock.patch.object(gpath, '_is_tf_installed', lambda: False), \
      mock.patch.object(metric_writers, 'SummaryWriter', lambda d: summary_writer(local(d))), \
      mock.patch.object(logs, '_start_session',
                        lambda d, step: start_session(epath.Path(local(d)), step)):
    sys.argv[0] = os.path.join(ROOT, 'main.py')
    runpy.run_path(sys.argv[0], run_name='__main__')
