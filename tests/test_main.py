"""End to end: main.py and the README's main command."""
import json
import os
import subprocess
import sys

from processes import single_device_env
from sagan_jax.mesh import cpu_device_count


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_quickstart_command(tfds_dir, tmp_path):
  # As a user runs it: the CPU devices main.py chooses (one per core), not the suite's 8.
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
       '--config.num_train_steps=4', '--config.log_every_steps=2', f'--config.data_dir={tfds_dir}',
       '--config.eval_num_samples=100'],
      cwd=ROOT, env=single_device_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{cpu_device_count(32, os.cpu_count())} devices, 1 processes' in result.stderr
  assert 'step 4/4' in result.stderr and 'images/s' in result.stderr and 'ETA' in result.stderr
  assert os.path.exists(tmp_path / 'samples' / '0000004_ema.png')
  # A quiet console: this program's lines, none of Orbax's, JAX's or TensorFlow's chatter.
  lines = result.stderr.strip().splitlines()
  assert len(lines) <= 15, result.stderr
  for noise in ('orbax', 'CheckpointManager', 'oneDNN', 'libtpu', 'absl::InitializeLog',
                'cache_dataset_ops'):
    assert noise not in result.stderr, noise
  assert 'Saving the checkpoint of step 4' in result.stderr
  # The quickstart evaluates itself at its last step, against the floor it logged first.
  assert 'Evaluation floor (100 real images' in result.stderr
  assert 'eval at step 4 | eval/ema/frechet_distance' in result.stderr
  for metric in ('class_accuracy', 'precision', 'recall', 'density', 'coverage'):
    assert f'eval/ema/{metric} ' in result.stderr, metric


def test_main_trains_the_cifar10_config_under_mock_data(tmp_path):
  code = f"""
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = ['main.py', '--config=configs/cifar10.py', '--workdir={tmp_path}',
            '--config.data_dir={tmp_path / "tfds"}', '--config.ch=2', '--config.batch_size=8',
            '--config.num_train_steps=2', '--config.log_every_steps=1', '--verbose']
with tfds.testing.mock_data(num_examples=64):
  runpy.run_path('main.py', run_name='__main__')
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 2/2' in result.stderr
  assert 'CheckpointManager' in result.stderr  # --verbose: the libraries' lines too
  assert os.path.exists(tmp_path / 'samples' / '0000002_ema.png')
  # The data position: the stream's elements consumed, 2 steps of one batch of 8.
  position = json.loads((tmp_path / 'checkpoints' / '2' / 'data' / 'metadata').read_text())
  assert position == {'consumed': 16, 'seed': 0, 'examples': 64}


def test_main_reports_a_missing_dataset_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10.py', f'--workdir={tmp_path}',
       f'--config.data_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'Data error: cifar10 is not prepared in {tmp_path}: run once, on a machine with network '
      f'access: tfds build cifar10 --file_format=array_record --data_dir={tmp_path}')


def test_every_bad_invocation_is_one_line_with_the_fix(tmp_path):
  """Exit status 1 and one line on stderr, before anything is compiled."""
  quick, wd = '--config=configs/quickstart.py', f'--workdir={tmp_path}'
  cases = {  # arguments: what the line must say
      ('--mdoe=sample', wd): "Unknown command line flag 'mdoe'. Did you mean: mode",
      ('--mode=smaple', wd):
          'value should be one of <train|sample|interpolate|attention|eval|reference|compile>',
      (quick,): '--workdir is required',
      (quick, wd, '--config.ch=abc'): "flag --config.ch=abc: invalid literal for int()",
      (quick, wd, '--config.chh=4'): "config.chh is not a known field; did you mean 'ch'?",
      ('--config=configs/nope.py', wd):
          '--config=configs/nope.py does not load: [Errno 2] No such file',
      (quick, wd, '--export_samples=5'):
          '--export_samples is an option of the sample, interpolate',
      ('--mode=sample', wd, '--config.ch=4'): 'modes read the config from the checkpoint',
      ('--mode=sample', wd, quick): 'leave out --config and --config.FIELD',
      ('--mode=sample', wd): f'no checkpoint in {tmp_path}',
      ('--mode=reference', wd): '--mode=reference needs the --config of the runs',
      ('--mode=reference', wd, quick, '--queries=1,1'):
          '--mode=reference takes --eval_samples, --intra_class, --features, '
          '--inception_weights, --classifier_weights, not --queries',
      # One of several processes (here as SLURM starts them) without a distributed client.
      (quick, wd, 'SLURM_NTASKS=2'): 'this process is one of 2 (SLURM_NTASKS=2) but would run '
                                     'alone: add --distributed',
  }
  env = lambda args: dict(os.environ, **dict(a.split('=') for a in args if '--' not in a))
  runs = {args: subprocess.Popen([sys.executable, 'main.py', *[a for a in args if '--' in a]],
                                 cwd=ROOT, text=True, env=env(args), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
          for args in cases}
  for args, expected in cases.items():
    _, err = runs[args].communicate(timeout=120)
    lines = [l for l in err.strip().splitlines() if 'JAX process' not in l]
    assert runs[args].returncode == 1 and len(lines) == 1, (args, err[-2000:])
    assert expected in lines[0], (args, lines[0])
    assert 'Traceback' not in err
