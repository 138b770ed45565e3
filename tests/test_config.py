"""Configs load and validate; bad values fail at once with the field and the fix."""
import os
import subprocess
import sys

import pytest

from sagan_jax.config import ConfigError, validate
from sagan_jax.device_policy import attention_implementation, fused_resampling
from tiny_config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name', ['imagenet128', 'cifar10', 'quickstart', 'shapes'])
def test_shipped_configs_are_valid(name):
  validate(load_config(name), num_devices=8)


def test_imagenet128_is_the_papers_setup():
  c = load_config('imagenet128')
  assert (c.image_size, c.num_classes, c.ch, c.attention_resolution, c.batch_size) == (
      128, 1000, 64, 64, 256)
  assert (c.g_lr, c.d_lr, c.adam_b1, c.loss, c.num_d_steps) == (1e-4, 4e-4, 0.0, 'hinge', 1)
  # Where StudioGAN differs from the authors' code, the authors' code.
  assert (c.cbn, c.init, c.state_updates, c.d_shortcut_relu, c.adam_eps, c.sn_eps, c.bn_eps) == (
      'tables', 'xavier', 'once', False, 1e-8, 1e-12, 1e-5)


@pytest.mark.parametrize('field, value, message', [
    ('image_size', 48, r'config.image_size=48 is not allowed: one of \[32, 64, 128, 256\]'),
    ('cbn', 'linear', r"config.cbn='linear' is not allowed: one of \('tables', 'sn_linear'\)"),
    ('state_updates', 'twice', r"config.state_updates='twice' is not allowed: one of"),
    ('attention_resolution', 64, r'config.attention_resolution=64 .* one of \[8, 16\] at 32 px'),
    ('batch_size', 12, r'config.batch_size=12 .* multiple of the device count \(8\)'),
    ('g_lr', 0.0, r'config.g_lr=0.0 is not allowed: a positive number'),
    ('d_lr', -1e-4, r'config.d_lr=-0.0001 is not allowed: a positive number'),
    ('loss', 'lsgan', r"config.loss='lsgan' .* one of \('hinge', 'non_saturating', 'wasserstein'\)"),
    ('attention', 'flash', r"config.attention='flash' .* one of \('sagan', 'simple'\)"),
    ('ch', 3, r'config.ch=3 .* multiples of 8'),
    ('ema_decay', 1.0, r'config.ema_decay=1.0 .* in \[0, 1\)'),
    ('attention_impl', 'cudnn', r"config.attention_impl='cudnn' .* needs an NVIDIA GPU"),
    ('resampling', 'pixel_shuffle', r"config.resampling='pixel_shuffle' .* one of \('auto', 'fused', "
                                    r"'separate'\)"),
    ('eval_intra_class', '3,10', r"config.eval_intra_class='3,10': class 10 is out of range; "
                                 r'this model has 10 classes, 0 to 9'),
    ('eval_num_samples', 19, r'config.eval_num_samples=19 .* at least 2 samples per class'),
    ('eval_num_samples', 5, r"config.eval_num_samples=5 .* >= 6 \(density and coverage use each "
                            r"sample's 5th nearest other\)"),
])
def test_bad_values_name_the_field_and_the_allowed_values(field, value, message):
  c = load_config('quickstart')
  c[field] = value
  if field == 'eval_num_samples' and value > 6:
    c.eval_intra_class = 'all'
  with pytest.raises(ConfigError, match=message):
    validate(c, num_devices=8)


def test_unknown_field_is_an_error_with_a_suggestion():
  c = load_config('quickstart')
  c.unlock()
  c.bacth_size = 64
  with pytest.raises(ConfigError, match=r"config.bacth_size is not a known field; did you mean "
                                        r"'batch_size'\?"):
    validate(c, num_devices=1)


@pytest.mark.parametrize('override, message', [
    ('--config.image_size=48', 'Config error: config.image_size=48 is not allowed'),
    ('--config.bathc_size=3', "Config error: config.bathc_size is not a known field; did you mean"),
])
def test_main_rejects_bad_config_in_one_line_before_compiling(tmp_path, override, message):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
       override], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'samples')  # failed before any work


def test_auto_attention_picks_cudnn_only_where_it_runs_and_blocks_on_the_cpu():
  c = load_config('imagenet128')
  assert attention_implementation(c, 'nvidia_gpu') == 'xla'  # float32
  c.dtype = 'bfloat16'
  assert attention_implementation(c, 'nvidia_gpu') == 'cudnn'  # values 64 (G), 32 (D) wide
  assert attention_implementation(c, 'tpu') == 'xla'
  assert attention_implementation(c, 'cpu') == 'blocked'
  c.ch = 256  # G's values 512 wide: too wide for cuDNN before Hopper
  assert attention_implementation(c, 'nvidia_gpu') == 'xla'
  c.ch = 60  # values 120 and 60 wide: not multiples of 8
  assert attention_implementation(c, 'nvidia_gpu') == 'xla'
  c.ch, c.attention = 64, 'simple'  # values C = 128 and 64 wide: fit
  assert attention_implementation(c, 'nvidia_gpu') == 'cudnn'


def test_auto_resampling_is_fused_only_on_the_cpu():
  c = load_config('imagenet128')
  assert fused_resampling(c, 'cpu') and not fused_resampling(c, 'gpu')
  assert not fused_resampling(c, 'tpu')
  c.resampling = 'fused'
  assert fused_resampling(c, 'gpu')
  c.resampling = 'separate'
  assert not fused_resampling(c, 'cpu')
