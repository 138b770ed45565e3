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
  and every library's errors. A program that uses TensorFlow (or TFDS's
  preparation) then calls import_tensorflow_quietly()."""
  from absl import logging
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ INFO and WARNING
  # ABSLHandler hands records to its python_handler without applying its own filters.
  logging.get_absl_handler().python_handler.addFilter(_ProjectLines())


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (~7 s of CPU) without its notices. TensorFlow 2.21 prints them
  from C++ while it is imported, before any log setting applies: import it with the
  stderr file descriptor captured, and replay what was captured if the import fails.
  Call before anything else imports it."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with tempfile.TemporaryFile() as captured:
    stderr = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module('tensorflow')
    except BaseException:
      os.dup2(stderr, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors='replace'))
      raise
    finally:
      os.dup2(stderr, 2)
      os.close(stderr)
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


def tensorflow_off_accelerators() -> None:
  """TensorFlow only writes TensorBoard summaries here: keep it off the GPUs (JAX's),
  where it would reserve memory at its first operation."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow was initialised already, by an importer who chose
    pass


class MetricWriter:
  """Scalars and images for TensorBoard (WORKDIR/tensorboard, through
  clu.metric_writers), the same scalars in WORKDIR/metrics.jsonl. Only the
  writing process (process 0) passes enabled=True; the others write nothing.

  resumed_from=N (a run resumed from the checkpoint of step N): what the
  interrupted run logged after step N is dropped, so that each step appears once:
  metrics.jsonl loses those lines, and TensorBoard gets a session start at step
  N + 1, which makes it discard the old events from there (its default
  --purge_orphaned_data).

  metrics.jsonl is rewritten (its kept lines first), never opened for appending:
  object stores have no append, and gcsfs would silently start it empty."""

  def __init__(self, workdir: str, enabled: bool = True, resumed_from: int | None = None):
    self._summary = self._jsonl = None
    if enabled:
      tensorflow_off_accelerators()
      from clu import metric_writers  # imports TensorFlow's summary ops
      logdir, jsonl = epath.Path(workdir) / 'tensorboard', epath.Path(workdir) / 'metrics.jsonl'
      kept = _lines_up_to(jsonl, resumed_from or 0)
      if resumed_from is not None:
        _start_session(logdir, resumed_from + 1)
      self._summary = metric_writers.SummaryWriter(str(logdir))
      self._jsonl = jsonl.open('w')
      self._jsonl.write(kept)
      self._jsonl.flush()

  def scalars(self, step: int, scalars: dict) -> None:
    if self._summary:
      self._summary.write_scalars(step, scalars)
      self._summary.flush()
      self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
      self._jsonl.flush()

  def images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """images: name -> uint8 [H, W, 3]."""
    if self._summary:
      self._summary.write_images(step, {k: v[None] for k, v in images.items()})
      self._summary.flush()

  def close(self) -> None:
    if self._summary:
      self._summary.close()
      self._jsonl.close()


def _lines_up_to(jsonl: epath.Path, step: int) -> str:
  """The lines of metrics.jsonl up to `step` (none for a run that starts at 0)."""
  if not jsonl.exists():
    return ''
  return ''.join(line for line in jsonl.read_text().splitlines(keepends=True)
                 if line.strip() and json.loads(line)['step'] <= step)


def _start_session(logdir: epath.Path, step: int) -> None:
  """An event file holding one SessionLog START at `step`; its name sorts after
  the earlier runs' files and before the one the new writer opens (TensorBoard
  reads a directory's files in name order)."""
  import tensorflow as tf
  logdir.mkdir(parents=True, exist_ok=True)
  now = time.time()
  # 'events.out.tfevents.<seconds>.' then '!' sorts before any host name.
  path = logdir / f'events.out.tfevents.{int(now)}.!resume_{step}'
  with tf.io.TFRecordWriter(str(path)) as f:
    f.write(tf.compat.v1.Event(wall_time=now, file_version='brain.Event:2').SerializeToString())
    f.write(tf.compat.v1.Event(wall_time=now, step=step, session_log=tf.compat.v1.SessionLog(
        status=tf.compat.v1.SessionLog.START)).SerializeToString())


def format_metrics(metrics: dict) -> str:
  return ' '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                  if '_per_s' not in k and not k.endswith('_std') and k != 'seconds')
