"""Configs for tests: the tiny one every test trains, and the shipped files.

No side effects: safe to import anywhere."""
import os

from sagan_jax.config import default_config, from_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, **overrides):
  """get_config() of configs/NAME.py, with `overrides`."""
  return from_file(os.path.join(ROOT, 'configs', f'{name}.py'), **overrides)


def tiny_config(**overrides):
  """32 px, 8 channels, batch 8 (one example per simulated device)."""
  c = default_config()
  c.update(dict(image_size=32, num_classes=4, ch=2, z_dim=16, attention_resolution=16,
                batch_size=8, num_d_steps=2, ema_decay=0.9, ema_start_step=1,
                log_every_steps=1, sample_every_steps=2,
                sample_classes=4, samples_per_class=2, num_train_steps=3))
  c.update(overrides)
  return c


ON_SHAPES = dict(dataset='sagan_shapes', num_classes=10)  # the embedded dataset


def get_config():
  """For main.py in tests (--config=tests/tiny_config.py): the tiny config on the
  embedded dataset, compiling the same programs as tiny_config(**ON_SHAPES)."""
  return tiny_config(**ON_SHAPES)


def shapes_config(data_dir, **overrides):
  """The tiny config on the embedded dataset prepared in `data_dir`."""
  return tiny_config(**ON_SHAPES, data_dir=data_dir, **overrides)
