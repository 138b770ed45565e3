"""End to end: main.py and the README's main command."""
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_quickstart_command(tfds_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
       '--config.num_train_steps=4', '--config.log_every_steps=2', f'--config.data_dir={tfds_dir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 4/4' in result.stderr and 'images/s' in result.stderr and 'ETA' in result.stderr
  assert os.path.exists(tmp_path / 'samples' / '0000004_ema.png')


def test_main_trains_the_cifar10_config_under_mock_data(tmp_path):
  code = f"""
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = ['main.py', '--config=configs/cifar10.py', '--workdir={tmp_path}',
            '--config.data_dir={tmp_path / "tfds"}', '--config.ch=2', '--config.batch_size=8',
            '--config.num_train_steps=2', '--config.log_every_steps=1',
            '--config.shuffle_buffer=16']
with tfds.testing.mock_data(num_examples=64):
  runpy.run_path('main.py', run_name='__main__')
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 2/2' in result.stderr
  assert os.path.exists(tmp_path / 'samples' / '0000002_ema.png')
  # mock_data's pipeline runs Python, which tf.data cannot serialise: the
  # checkpoint is written without a data position, and the log says so.
  assert 'The data position cannot be saved' in result.stderr
  assert os.path.exists(tmp_path / 'checkpoints' / '2' / 'data' / 'process_0.unsaved')


def test_main_reports_a_missing_dataset_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10.py', f'--workdir={tmp_path}',
       f'--config.data_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'Data error: cifar10 is not prepared in {tmp_path}: run once, on a machine with network '
      f'access: tfds build cifar10 --data_dir={tmp_path}')
