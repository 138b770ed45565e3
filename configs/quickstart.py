"""Learns the embedded `sagan_shapes` dataset in minutes on 2 CPU cores; no download.

  python main.py --config=configs/quickstart.py --workdir=/tmp/sagan_quickstart
"""
from sagan_jax.config import default_config


def get_config():
  c = default_config()
  c.dataset = 'sagan_shapes'
  c.image_size = 32
  c.num_classes = 10
  c.ch = 8  # 32 channels in every block
  c.z_dim = 64
  c.attention_resolution = 16
  c.batch_size = 32
  c.num_train_steps = 3_000
  c.bn_momentum = 0.99  # a short run: let G's moving BN statistics keep up
  c.ema_decay = 0.999
  c.ema_start_step = 200
  c.log_every_steps = 50
  c.sample_every_steps = 500
  c.checkpoint_every_steps = 1_000
  return c
