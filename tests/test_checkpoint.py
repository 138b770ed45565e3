"""Checkpoints: exact resume, preemption, a crash mid-write, non-finite steps,
restore on another device count, and a changed config."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from sagan_jax import checkpoint, input_pipeline, memory, sampling, train, train_state
from sagan_jax.models import make_models
from processes import single_device_env
from tiny_config import shapes_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def saved_steps(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def test_resume_is_bit_exact(runs):
  _, split, straight, resumed = runs
  assert saved_steps(split) == [2, 4]
  paths_a, leaves_a = zip(*jax.tree_util.tree_flatten_with_path(jax.device_get(straight))[0])
  paths_b, leaves_b = zip(*jax.tree_util.tree_flatten_with_path(jax.device_get(resumed))[0])
  assert paths_a == paths_b
  # Parameters, both Adam states, spectral u's, BN averages, EMA, step and RNG key.
  assert {p[0].name for p in paths_a} == set(train_state.TrainState.__dataclass_fields__)
  for path, a, b in zip(paths_a, leaves_a, leaves_b):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)
  assert int(resumed.step) == 4


def test_training_loop_logs_samples_and_checkpoints(runs):
  straight = runs[0]
  lines = [json.loads(line) for line in open(os.path.join(straight, 'metrics.jsonl'))]
  assert [line['step'] for line in lines] == [1, 2, 3, 4]
  assert all(set(line) >= {'d_loss', 'g_loss', 'd_real', 'd_fake', 'steps_per_s',
                           'skipped_steps', 'gamma/G/attention'} for line in lines)
  samples = sorted(os.listdir(os.path.join(straight, 'samples')))
  assert samples == [f'{s:07d}_{kind}.png' for s in (0, 2, 4) for kind in ('ema', 'raw')]
  grid = Image.open(os.path.join(straight, 'samples', '0000004_ema.png'))
  assert grid.size == (2 * 34 * 2, 4 * 34 * 2)  # 2 columns, 4 class rows, 32 px + border, x2
  assert saved_steps(straight) == [2, 4]


def test_resume_with_a_different_architecture_names_the_fields(runs, tfds_dir):
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'step 4 .* differing fields: ch: 2 -> 8; z_dim: 16 -> 8\. Use'):
    train.train_and_evaluate(shapes_config(tfds_dir, ch=8, z_dim=8, num_train_steps=6), runs[1])
  assert saved_steps(runs[1]) == [2, 4]


GENERATE = """
import sys
import jax, numpy as np
from sagan_jax import checkpoint, sampling, train
from sagan_jax.models import make_models
assert jax.device_count() == 1, jax.devices()
variables, config, step = checkpoint.restore_generator(sys.argv[1], train.make_mesh())
z, labels = sampling.grid_latents(config, 7)
np.save(sys.argv[2], np.asarray(make_models(config)[0].apply(variables, z, labels, train=False)))
"""


def test_restore_on_one_device_gives_the_same_samples(runs, tmp_path):
  split, resumed = runs[1], runs[3]
  mesh = train.make_mesh()
  assert mesh.size == 8
  variables, config, step = checkpoint.restore_generator(split, mesh)
  assert step == 4 and config.ch == 2
  # Only G is read: the EMA weights by default, the raw ones on request.
  jax.tree.map(np.testing.assert_array_equal, variables['params'], resumed.ema_params)
  # ... with the EMA weights' own batch-norm statistics, not the raw G's moving averages.
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], resumed.ema_batch_stats)
  assert not np.allclose(jax.tree.leaves(variables['batch_stats'])[0],
                         jax.tree.leaves(resumed.g_batch_stats)[0], atol=1e-3)
  raw, _, _ = checkpoint.restore_generator(split, mesh, step=2, ema=False)
  assert not np.array_equal(jax.tree.leaves(raw['params'])[0],
                            jax.tree.leaves(resumed.g_params)[0])
  z, labels = sampling.grid_latents(config, 7)
  on_eight = make_models(config)[0].apply(variables, z, labels, train=False)

  result = subprocess.run([sys.executable, '-c', GENERATE, split, str(tmp_path / 'one.npy')],
                          env=single_device_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'one.npy'), on_eight, atol=1e-6)


def test_a_checkpoint_from_before_the_ema_statistics_and_grain_resumes_and_samples(
    runs, tfds_dir, tmp_path, caplog):
  """Written before the EMA G had BN statistics of its own, and with tf.data's
  per-process data position: it samples, and training resumes from it exactly."""
  import logging
  import orbax.checkpoint as ocp
  copies = {}
  for name in ('intact', 'old'):
    copies[name] = str(tmp_path / name)
    shutil.copytree(runs[1], copies[name], ignore=shutil.ignore_patterns('compilation_cache'))
  state_dir = os.path.join(copies['old'], 'checkpoints', '4', 'state')
  saved = ocp.StandardCheckpointer().restore(state_dir)
  del saved['ema_batch_stats']  # as written before the field existed
  shutil.rmtree(state_dir)
  with ocp.StandardCheckpointer() as writer:
    writer.save(state_dir, saved)
  data_dir = os.path.join(copies['old'], 'checkpoints', '4', 'data')
  shutil.rmtree(data_dir)
  os.mkdir(data_dir)
  for name in ('process_0.index', 'process_0.data-00000-of-00001'):  # tf.data's files
    open(os.path.join(data_dir, name), 'wb').close()
  # Sampling measures the EMA G's statistics as training would have at that step.
  variables, _, _ = checkpoint.restore_generator(copies['old'], train.make_mesh())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               variables['batch_stats'], jax.device_get(runs[3].ema_batch_stats))
  # Training resumes from it exactly as from the intact checkpoint.
  config = shapes_config(tfds_dir, num_train_steps=5, checkpoint_every_steps=2)
  with caplog.at_level(logging.WARNING):
    states = {name: jax.device_get(train.train_and_evaluate(config, workdir))
              for name, workdir in copies.items()}
  assert 'data position of the former tf.data input' in caplog.text
  assert int(states['old'].step) == 5
  jax.tree.map(np.testing.assert_array_equal, states['old'], states['intact'])


def test_restore_errors_say_what_is_missing(runs, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    checkpoint.restore_generator(str(tmp_path), train.make_mesh())
  with pytest.raises(checkpoint.CheckpointError, match=r'no checkpoint of step 3 .* \[2, 4\]'):
    checkpoint.restore_generator(runs[1], train.make_mesh(), step=3)


def test_a_checkpoint_older_than_a_config_field_gets_its_default(runs, tmp_path):
  import json
  import shutil
  old = tmp_path / 'old'
  shutil.copytree(runs[1], old, ignore=shutil.ignore_patterns('compilation_cache'))
  meta = old / 'checkpoints' / '4' / 'meta' / 'metadata'
  saved = json.loads(meta.read_text())
  assert saved['config']['eval_intra_class'] == ''
  del saved['config']['eval_intra_class']  # as if written before the field existed
  meta.write_text(json.dumps(saved))
  _, config, _ = checkpoint.restore_generator(str(old), train.make_mesh())
  assert config.eval_intra_class == '' and config.ch == 2  # default: '' and 64


# main.py, and a last line that says whether TensorFlow was imported (a normal exit).
MAIN_SAYING_IMPORTS = """import atexit, runpy, sys
atexit.register(lambda: print('TensorFlow imported:', 'tensorflow' in sys.modules, file=sys.stderr))
sys.argv[0] = 'main.py'
runpy.run_path('main.py', run_name='__main__')"""


class Run:
  """main.py on the tiny config in a subprocess, its log lines collected as they come."""

  def __init__(self, workdir, tfds_dir, *flags):
    self.lines = []
    self.process = subprocess.Popen(
        [sys.executable, '-c', MAIN_SAYING_IMPORTS, '--config=tests/tiny_config.py',
         f'--workdir={workdir}', f'--config.data_dir={tfds_dir}', '--config.log_every_steps=1',
         *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr))
    self._reader.start()

  def wait_for(self, pattern, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
      for line in list(self.lines):
        if match := re.search(pattern, line):
          return match
      assert self.process.poll() is None, ''.join(self.lines[-30:])
      time.sleep(0.05)
    raise AssertionError(f'no {pattern!r} in:\n' + ''.join(self.lines[-30:]))

  def finish(self, timeout=300):
    code = self.process.wait(timeout)
    self._reader.join()
    return code


def test_preemption_then_a_crash_mid_write_then_resume(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')

  # SIGTERM: save at the step reached, exit 0.
  run = Run(workdir, tfds_dir, '--config.num_train_steps=1000',
            '--config.checkpoint_every_steps=1000')
  run.wait_for(r'step 3/1000')
  run.process.send_signal(signal.SIGTERM)
  assert run.finish() == 0, ''.join(run.lines[-30:])
  preempted = int(run.wait_for(r'Preempted: saved the checkpoint of step (\d+)')[1])
  assert preempted >= 3 and saved_steps(workdir) == [preempted]
  # Training on local paths needs no TensorFlow (~7 s of CPU to import), unless the
  # dataset had to be prepared first.
  prepared = any('Preparing sagan_shapes' in line for line in run.lines)
  assert run.lines[-1] == f'TensorFlow imported: {prepared}\n', ''.join(run.lines[-5:])

  # The restart continues from there; SIGKILL it while a checkpoint is being written.
  for attempt in range(3):
    start = max(saved_steps(workdir))
    run = Run(workdir, tfds_dir, '--config.num_train_steps=1000',
              '--config.checkpoint_every_steps=1')
    run.wait_for(rf'Resumed from the checkpoint of step {start} ')
    while not (max(saved_steps(workdir)) > start + 1 and
               any('tmp' in n for n in os.listdir(ckpt_dir))):
      assert run.process.poll() is None, ''.join(run.lines[-30:])
    run.process.kill()
    assert run.finish() == -signal.SIGKILL
    if any('tmp' in n for n in os.listdir(ckpt_dir)):
      break  # killed with a write in flight
  else:
    pytest.fail('the kill never landed during a checkpoint write')

  previous = max(saved_steps(workdir))
  variables, _, step = checkpoint.restore_generator(workdir, train.make_mesh())
  assert step == previous
  run = Run(workdir, tfds_dir, f'--config.num_train_steps={previous + 1}')
  assert run.finish() == 0, ''.join(run.lines[-30:])
  run.wait_for(rf'Resumed from the checkpoint of step {previous} ')
  run.wait_for(rf'step {previous + 1}/{previous + 1} ')
  assert not any('tmp' in n for n in os.listdir(ckpt_dir))  # the partial write is cleaned up
  assert max(saved_steps(workdir)) == previous + 1

  # What the killed run logged after `previous` (at least step previous + 1) is
  # dropped: every step is logged once, in metrics.jsonl and as TensorBoard reads it.
  import json
  from tensorboard.backend.event_processing import plugin_event_accumulator as event_accumulator
  steps = [json.loads(line)['step'] for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == list(range(1, previous + 2))
  board = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'),
                                             size_guidance={event_accumulator.TENSORS: 0})
  board.Reload()
  assert [e.step for e in board.Tensors('d_loss')] == list(range(1, previous + 2))


class NaNBatches:
  """The real iterator, as float32 images with NaN in the batches numbered in `bad`."""

  def __init__(self, data, bad):
    self.data, self.bad, self.count = data, bad, 0

  def __next__(self):
    batch = next(self.data)
    image = batch['image'].astype(np.float32)
    if self.count in self.bad:
      image[..., 0, 0, 0] = np.nan
    self.count += 1
    return dict(batch, image=image)

  def __getattr__(self, name):  # position, restore, close, source: the real iterator's
    return getattr(self.data, name)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tfds_dir, tmp_path, monkeypatch):
  real = input_pipeline.create_train_iterator
  # Steps are counted from 1: batch i feeds step i + 1. Step 2 alone, then steps 4-6.
  monkeypatch.setattr(input_pipeline, 'create_train_iterator',
                      lambda config, mesh: NaNBatches(real(config, mesh), bad={1, 3, 4, 5}))
  # Float batches (uint8 holds no NaN): the step as jit, not compiled ahead for uint8 ones.
  monkeypatch.setattr(memory, 'compile_step', lambda update: (update.jitted(), memory.Memory()))
  config = shapes_config(tfds_dir, num_train_steps=10, checkpoint_every_steps=1,
                         max_nonfinite_steps=3)
  with pytest.raises(train.NonFiniteError, match=r'steps 4 to 6 had non-finite .* before step 4'):
    train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [line['step'] for line in lines] == [1, 2, 3, 4, 5]
  assert [line['skipped_steps'] for line in lines] == [0, 1, 1, 2, 3]
  gamma = [line['gamma/G/attention'] for line in lines]
  assert gamma[1] == gamma[0] != gamma[2]  # step 2 changed nothing; step 3 trained
  assert np.isnan(lines[1]['d_loss']) and np.isfinite(lines[2]['d_loss'])
  # Saves only from healthy states: the last good checkpoint is step 3's, and it loads.
  assert saved_steps(tmp_path) == [1, 3]
  variables, _, step = checkpoint.restore_generator(str(tmp_path), train.make_mesh())
  assert step == 3 and all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
