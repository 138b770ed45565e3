"""End to end: the training loop and the README's main command."""
import json
import os
import subprocess
import sys

from PIL import Image

from tiny_config import tiny_config
from sagan_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_loop_logs_and_writes_sample_grids(tfds_dir, tmp_path):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10,
                       sample_classes=3, samples_per_class=5)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [line['step'] for line in lines] == [1, 2, 3]
  assert all(set(line) >= {'d_loss', 'g_loss', 'd_real', 'd_fake', 'steps_per_s'} for line in lines)
  samples = sorted(os.listdir(tmp_path / 'samples'))
  assert samples == [f'{s:07d}_{kind}.png' for s in (0, 2, 3) for kind in ('ema', 'raw')]
  grid = Image.open(tmp_path / 'samples' / '0000003_ema.png')
  assert grid.size == (5 * 34 * 2, 3 * 34 * 2)  # 5 columns, 3 class rows, 32 px + border, x2


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


def test_main_reports_a_missing_dataset_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cifar10.py', f'--workdir={tmp_path}',
       f'--config.data_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'Data error: cifar10 is not prepared in {tmp_path}: run once, on a machine with network '
      f'access: tfds build cifar10 --data_dir={tmp_path}')
