"""main.py, for test_gcs: gs:// is the local emulator that the test started.

epath sends gs:// to TensorFlow's gfile when TensorFlow is installed, and gfile has no
setting for another endpoint. Here epath uses gcsfs, which honours STORAGE_EMULATOR_HOST
(the project's code is unchanged). Orbax's arrays (tensorstore) and ArrayRecord's reads
(Riegeli) reach the emulator through their own variables, which the test sets.
"""
import os
import runpy
import sys
from unittest import mock

from etils.epath import gpath

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == '__main__':
  with mock.patch.object(gpath, '_is_tf_installed', lambda: False):
    sys.argv[0] = os.path.join(ROOT, 'main.py')
    runpy.run_path(sys.argv[0], run_name='__main__')
