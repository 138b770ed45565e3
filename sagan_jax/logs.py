"""Progress lines, a quiet console, and metrics for TensorBoard and as JSON lines."""
import importlib
import json
import logging as python_logging
import os
import sys
import tempfile
import time

import numpy as np
from etils import epath

from sagan_jax import events


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This project's sources (a virtual environment may sit in the same directory).
PROJECT_SOURCES = tuple(os.path.join(_ROOT, p) for p in ('sagan_jax' + os.sep, 'main.py',
                                                         'benchmarks' + os.sep))


class _ProjectLines(python_logging.Filter):
  """This project's log lines at every level; other libraries' from ERROR up."""

  def filter(self, record) -> bool:
    return (record.levelno >= python_logging.ERROR or
            os.path.abspath(record.pathname).startswith(PROJECT_SOURCES))


def quiet_console() -> None:
  """Keeps Orbax's, JAX's and TensorFlow's INFO and WARNING chatter off the
  console: what is left is progress, saves, evaluations, this project's warnings
  and every library's errors. What needs TensorFlow imports it through
  import_tensorflow_quietly()."""
  from absl import logging
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ INFO and WARNING
  # ABSLHandler hands records to its python_handler without applying its own filters.
  logging.get_absl_handler().python_handler.addFilter(_ProjectLines())


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (~7 s of CPU), for what needs it: preparing a TFDS dataset,
  reading TFRecord files, gs:// through epath. Without its notices: TensorFlow 2.21
  prints them from C++ while it is imported, before any log setting applies, so it is
  imported with the stderr file descriptor captured (replayed if the import fails). It
  is kept off the GPUs (JAX's), where it would reserve memory at its first operation."""
  if 'tensorflow' not in sys.modules:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    with tempfile.TemporaryFile() as captured:
      stderr = os.dup(2)
      os.dup2(captured.fileno(), 2)
      try:
        tf = importlib.import_module('tensorflow')
      except BaseException:
        os.dup2(stderr, 2)
        captured.seek(0)
        sys.stderr.write(captured.read().decode(errors='replace'))
        raise
      finally:
        os.dup2(stderr, 2)
        os.close(stderr)
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow was initialised already, by an importer who chose
      pass
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # its bars while a dataset is prepared; we log one line


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


class Progress:
  """'what done/total | rate, elapsed, ETA' lines; the rate is since the last line."""

  def __init__(self, what: str, total: int | None, unit: str, done: int = 0,
               items: tuple[str, int] | None = None):
    """`items` = (name, per unit) adds a second rate, e.g. ('images', batch size);
    total None (not known in advance): no ETA."""
    self.what, self.total, self.unit, self.items = what, total, unit, items
    self._start = self._last_time = time.time()
    self._last_done = done
    self.rate = 0.0  # per second, over the span of the last line

  def line(self, done: int, extra: str = '') -> str:
    now = time.time()
    self.rate = (done - self._last_done) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_done = now, done
    eta = (self.total - done) / self.rate if self.rate > 0 and self.total else float('inf')
    eta = format_duration(eta) if eta != float('inf') else '?'
    rates = f'{self.rate:.2f} {self.unit}/s'
    if self.items:
      rates += f', {self.rate * self.items[1]:.0f} {self.items[0]}/s'
    elapsed = f'elapsed {format_duration(now - self._start)}'
    if self.total is None:
      return f'{self.what} {done} | {extra}{rates} | {elapsed}'
    return f'{self.what} {done}/{self.total} | {extra}{rates} | {elapsed}, ETA {eta}'


class MetricWriter:
  """Scalars and images for TensorBoard (an event file in WORKDIR/tensorboard), the same
  scalars in WORKDIR/metrics.jsonl. Only the writing process (process 0) passes
  enabled=True; the others write nothing.

  resumed_from=N (a run resumed from the checkpoint of step N): what the
  interrupted run logged after step N is dropped, so that each step appears once:
  metrics.jsonl loses those lines, and the new event file starts with a session start
  at step N + 1, which makes TensorBoard discard the old events from there.

  metrics.jsonl is rewritten (its kept lines first), never opened for appending:
  object stores have no append, and gcsfs would silently start it empty."""

  def __init__(self, workdir: str, enabled: bool = True, resumed_from: int | None = None):
    self._events = self._jsonl = None
    if enabled:
      jsonl = epath.Path(workdir) / 'metrics.jsonl'
      kept = _lines_up_to(jsonl, resumed_from or 0)
      self._events = events.EventFile(epath.Path(workdir) / 'tensorboard')
      if resumed_from is not None:
        self._events.start_session(resumed_from + 1)
      self._jsonl = jsonl.open('w')
      self._jsonl.write(kept)
      self._jsonl.flush()

  def scalars(self, step: int, scalars: dict) -> None:
    if self._events:
      self._events.summary(step, [events.scalar_value(k, float(v)) for k, v in scalars.items()])
      self._events.flush()
      self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
      self._jsonl.flush()

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """images: name -> uint8 [H, W, 3]."""
    if self._events:
      self._events.summary(step, [events.image_value(k, v) for k, v in images.items()])
      self._events.flush()

  def close(self) -> None:
    if self._events:
      self._events.close()
      self._jsonl.close()


def _lines_up_to(jsonl: epath.Path, step: int) -> str:
  """The lines of metrics.jsonl up to `step` (none for a run that starts at 0)."""
  if not jsonl.exists():
    return ''
  return ''.join(line for line in jsonl.read_text().splitlines(keepends=True)
                 if line.strip() and json.loads(line)['step'] <= step)


def format_metrics(metrics: dict) -> str:
  return ' '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                  if '_per_s' not in k and not k.endswith('_std') and k != 'seconds')
