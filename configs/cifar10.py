"""CIFAR-10, 32x32, 10 classes, attention at 16x16.

  python main.py --config=configs/cifar10.py --workdir=$WORKDIR
"""
from sagan_jax.config import default_config


def get_config():
  c = default_config()
  c.dataset = 'cifar10'
  c.image_size = 32
  c.num_classes = 10
  c.ch = 64  # 256 channels in every block at 32 px
  c.attention_resolution = 16
  c.batch_size = 64
  c.num_train_steps = 100_000
  c.ema_start_step = 1_000
  c.ema_decay = 0.9999
  c.log_every_steps = 500
  c.sample_every_steps = 5_000
  return c
