"""main.py itself as a local multi-process cluster (jax.distributed on localhost, 2
processes x 2 CPU devices), as on a TPU pod: training with evaluation, every mode
(and the reference statistics) equal to the same run on one process, preemption, a
lost process, and a resume on another process count."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from processes import single_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def start_main(num_processes: int, devices: int, *args, timeout_flags=()) -> list:
  """main.py as `num_processes` processes of `devices` CPU devices each."""
  env = single_device_env(JAX_NUM_CPU_DEVICES=str(devices))
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  cluster = lambda i: ([f'--coordinator_address=localhost:{port}',
                        f'--num_processes={num_processes}', f'--process_id={i}', *timeout_flags]
                       if num_processes > 1 else [])
  return [subprocess.Popen([sys.executable, 'main.py', *args, *cluster(i)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(num_processes)]


def finish(processes, timeout=400) -> list[tuple[int, str, str]]:
  out = []
  for p in processes:
    stdout, stderr = p.communicate(timeout=timeout)
    out.append((p.returncode, stdout, stderr))
  return out


def run_main(num_processes: int, devices: int, *args) -> list[tuple[int, str, str]]:
  results = finish(start_main(num_processes, devices, *args))
  assert [code for code, _, _ in results] == [0] * num_processes, '\n\n'.join(
      f'process {i} exited {code}:\n{err[-2500:]}' for i, (code, _, err) in enumerate(results))
  return results


def train_flags(workdir, tfds_dir, *extra):
  # One D step per step: a third smaller program than the tiny config's two. Every process
  # compiles it: process 1 finds none of its programs in the compilation cache (only
  # process 0 writes there, and process 1's cache keys differ).
  return ['--config=tests/tiny_config.py', f'--workdir={workdir}',
          f'--config.data_dir={tfds_dir}', '--config.num_d_steps=1', *extra]


@pytest.fixture(scope='module')
def pod_run(tfds_dir, tmp_path_factory):
  """A tiny run trained by 2 processes, with evaluation, grids and checkpoints every 2 steps."""
  workdir = tmp_path_factory.mktemp('pod_run')
  results = run_main(2, 2, *train_flags(
      workdir, tfds_dir, f'--config.num_train_steps={STEPS}', '--config.eval_every_steps=2',
      '--config.eval_num_samples=40', '--config.checkpoint_every_steps=2',
      '--config.sample_every_steps=2'))
  return workdir, results


@pytest.mark.slow
def test_training_with_evaluation_on_two_processes(pod_run):
  workdir, [(_, _, first), (_, _, second)] = pod_run
  assert 'Training steps 1 to 4; 4 devices, 2 processes' in first
  assert 'eval at step 2 |' in first and 'eval at step 4 |' in first
  assert 'eval at step' not in second  # progress is logged by process 0 only
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  evals = [r['step'] for r in rows if 'eval/ema/frechet_distance' in r]
  assert evals == [2, 4]  # each row written once, by process 0
  assert all(np.isfinite(r['eval/ema/class_accuracy']) for r in rows
             if 'eval/ema/frechet_distance' in r)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert os.listdir(workdir / 'checkpoints_best')
  assert {f'{s:07d}_{g}.png' for s in (0, 2, 4) for g in ('ema', 'raw')} <= set(
      os.listdir(workdir / 'samples'))


MODES = {
    'eval': ['--mode=eval', '--eval_samples=12', '--features=inception'],  # + weights below
    'sample': ['--mode=sample', '--export_samples=10', '--format=npz', '--classes=0,3'],
    'interpolate': ['--mode=interpolate', '--classes=1,2', '--strip_images=4'],
    'attention': ['--mode=attention', '--classes=5'],
}


def files(directory) -> dict[str, bytes]:
  return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.fixture(scope='module')
def random_inception(tmp_path_factory) -> str:
  """An Inception-v3 weight file of random weights: the same computation as FID's."""
  from sagan_jax import inception, weights
  path = str(tmp_path_factory.mktemp('inception') / 'random.npz')
  weights.save(inception.random_params(), path)
  return path


@pytest.mark.slow
def test_every_mode_on_two_processes_equals_one_process(pod_run, tfds_dir, random_inception,
                                                         tmp_path):
  """The modes, and the reference statistics. The evaluation here uses the Inception
  extractor (FID, IS, KID), the in-training evaluation above the classifier: the
  evaluation code is the same for both."""
  workdir, _ = pod_run
  reference = lambda out: ['--mode=reference', *train_flags(workdir, tfds_dir),
                           f'--config.reference_dir={out}', '--eval_samples=12',
                           '--features=inception', f'--inception_weights={random_inception}']
  for mode in [*MODES, 'reference']:
    pod, single = tmp_path / mode / 'pod', tmp_path / mode / 'single'
    # --mode=eval's reference statistics go to the pod run's workdir, where both runs
    # below may write them: whole files (renamed into place), equal.
    weights = [f'--inception_weights={random_inception}'] if mode == 'eval' else []
    flags = lambda out: (reference(out) if mode == 'reference' else
                         [*MODES[mode], f'--workdir={workdir}', f'--out={out}', *weights])
    runs = start_main(2, 2, *flags(pod)) + start_main(1, 4, *flags(single))
    for code, _, err in finish(runs):
      assert code == 0, (mode, err[-3000:])
    a, b = files(pod), files(single)
    assert a.keys() == b.keys() and a, mode
    for name in a:
      if name.endswith('.npz') and mode == 'reference':  # features and their statistics
        with np.load(pod / name) as x, np.load(single / name) as y:
          for key in x:
            np.testing.assert_allclose(x[key], y[key], rtol=1e-4, atol=1e-5, err_msg=name)
      elif name.endswith('.json'):  # metrics: equal to float tolerance (not the timings)
        x, y = json.loads(a[name]), json.loads(b[name])
        for key in x:
          if isinstance(x[key], float) and 'per_s' not in key and key != 'seconds':
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (mode, key)
      else:
        assert a[name] == b[name], (mode, name)  # images and exports: identical


TRAINING = ('d_loss', 'g_loss', 'd_real', 'd_fake', 'd_grad_norm', 'g_grad_norm',
            'gamma/G/attention', 'sigma/D/max')


@pytest.mark.slow
def test_training_on_two_processes_and_across_process_counts_is_one_global_run(
    pod_run, tfds_dir, tmp_path):
  """The pod's 4 steps, then step 5 resumed on 1 process and step 6 on 2 again: the
  same losses at every step as one process training 6 steps straight (the same
  global batches: the data position is global), and the same evaluation at step 2."""
  workdir, _ = pod_run
  copy, straight = tmp_path / 'run', tmp_path / 'straight'
  subprocess.run(['cp', '-r', str(workdir), str(copy)], check=True)
  run_main(1, 4, *train_flags(straight, tfds_dir, f'--config.num_train_steps={STEPS + 2}',
                              '--config.checkpoint_every_steps=2', '--config.eval_every_steps=2',
                              '--config.eval_num_samples=40'))
  for processes, devices, steps in ((1, 4, STEPS + 1), (2, 2, STEPS + 2)):
    [(_, _, log), *_] = run_main(processes, devices, *train_flags(
        copy, tfds_dir, f'--config.num_train_steps={steps}', '--config.eval_every_steps=0'))
    assert f'Resumed from the checkpoint of step {steps - 1}' in log
    assert f'step {steps}/{steps}' in log
  rows = lambda d: [json.loads(line) for line in open(d / 'metrics.jsonl') if '"d_loss"' in line]
  resumed, expected = rows(copy), rows(straight)
  assert [r['step'] for r in resumed] == [r['step'] for r in expected] == list(
      range(1, STEPS + 3))
  # Equal up to float rounding: the 2 processes' collectives sum in another order than
  # one process's, and training amplifies that from step to step (measured: 1e-7 at step
  # 1, up to 2e-4 relative at step 6); another batch moves these numbers by percents.
  for got, want in zip(resumed, expected):
    for key in TRAINING:
      assert got[key] == pytest.approx(want[key], rel=2e-3, abs=1e-5), (got['step'], key)
  # The in-training evaluation (classifier) of the pod's step 2 and of one process's.
  evals = lambda d: {r['step']: r for r in map(json.loads, open(d / 'metrics.jsonl'))
                     if 'eval/ema/frechet_distance' in r}
  pod, single = evals(workdir)[2], evals(straight)[2]
  keys = [k for k in single if k.startswith('eval/') and 'per_s' not in k and 'seconds' not in k]
  assert len(keys) >= 8 and set(keys) <= set(pod)
  for key in keys:  # abs: the raw G's diversity, near 0 (1 against the data's 20), moves
    #   by 2e-3 with the rounding
    assert pod[key] == pytest.approx(single[key], rel=1e-3, abs=5e-3, nan_ok=True), key
  # The sample grids of step 4; the EMA G of the pod's periodic checkpoint of step 4 and
  # of its best checkpoint, against one process's checkpoint of the same step.
  import jax
  from PIL import Image
  from sagan_jax import checkpoint, mesh
  for name in ('0000004_ema.png', '0000004_raw.png'):
    grids = [np.asarray(Image.open(d / 'samples' / name), np.int16) for d in (workdir, straight)]
    assert np.abs(grids[0] - grids[1]).max() <= 2, name
  def generator(directory, step=None, best=False):
    variables, _, step = checkpoint.restore_generator(str(directory), mesh.make_mesh(),
                                                      step=step, best=best)
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)]), step

  # Adam moves a weight by about the learning rate per step, and rounding can flip the
  # sign of a near-zero gradient: compare with how far the weights move in two steps.
  for best in (False, True):
    ours, step = generator(workdir, None if best else 4, best)
    theirs, _ = generator(straight, step)
    other, _ = generator(straight, 2 if step != 2 else 4)
    assert np.linalg.norm(ours - theirs) < 0.05 * np.linalg.norm(theirs - other), (best, step)


def wait_for_steps(processes, metrics, count: int):
  deadline = time.time() + 300
  while not metrics.exists() or len(metrics.read_text().splitlines()) < count:
    assert time.time() < deadline and all(p.poll() is None for p in processes)
    time.sleep(0.5)


@pytest.mark.slow
def test_a_killed_process_then_sigterm_to_every_process(tfds_dir, tmp_path):
  """SIGKILL of one process mid-run: the other stops soon with a clear message (its next
  collective fails, or the coordination service reports the lost process after at most
  --heartbeat_timeout), and a restart resumes from the last complete checkpoint. Then
  SIGTERM to every process, as a TPU maintenance event sends: they agree on one step,
  save it, exit 0, and a restart resumes from it."""
  flags = lambda steps: train_flags(
      tmp_path, tfds_dir, f'--config.num_train_steps={steps}', '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=3', '--config.sample_every_steps=1000')
  metrics = tmp_path / 'metrics.jsonl'
  processes = start_main(2, 2, *flags(1000), timeout_flags=['--heartbeat_timeout=20'])
  wait_for_steps(processes, metrics, 5)
  processes[1].kill()
  start = time.time()
  code, _, err = finish(processes[:1], timeout=120)[0]
  processes[1].communicate()
  assert code != 0 and time.time() - start < 120
  # Which notices first is a race: the failed collective (our one line), or JAX's
  # coordination service, which aborts the process with its own message (and a stack dump).
  ours = 'Training stopped: process 0 lost another process of this run' in err
  jaxs = 'This most likely indicates that another task died' in err
  assert ours or jaxs, err[-3000:]
  assert not ours or 'Fatal Python error' not in err
  saved = max(int(step) for step in os.listdir(tmp_path / 'checkpoints') if step.isdigit())

  processes = start_main(2, 2, *flags(1000))
  wait_for_steps(processes, metrics, len(metrics.read_text().splitlines()) + 3)
  for p in processes:
    p.send_signal(signal.SIGTERM)
  results = finish(processes, timeout=120)
  assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
  assert f'Resumed from the checkpoint of step {saved}' in results[0][2]
  preempted = max(int(step) for step in os.listdir(tmp_path / 'checkpoints') if step.isdigit())
  assert f'Preempted: saved the checkpoint of step {preempted}' in results[0][2]
  # On one process (another count resumes too: the test above): its programs are in the
  # compilation cache, where a second process finds none of its own.
  resumed = run_main(1, 4, *flags(preempted + 1))
  assert f'Resumed from the checkpoint of step {preempted}' in resumed[0][2]
