"""Learns 4,000 real MNIST digits (the embedded `sagan_digits`, no download) in under
10 minutes on 2 CPU cores. Evaluates itself every 500 steps with the shipped digits
classifier, against the floor of the 1,000 held-out digits.

  python main.py --config=configs/quickstart.py --workdir=/tmp/sagan_quickstart

The model and training settings are those of the PyTorch comparison in BENCHMARKS.md
("Real digits"): 64 channels, attention at 16x16, z 64, batch 32, G 2e-4 / D 8e-4.
"""
from sagan_jax.config import default_config


def get_config():
  c = default_config()
  c.dataset = 'sagan_digits'
  c.image_size = 32
  c.num_classes = 10
  c.ch = 16  # 64 channels in every block at 32 px
  c.z_dim = 64
  c.attention_resolution = 16
  c.batch_size = 32
  c.g_lr = 2e-4  # TTUR 1:4 as in the paper, at twice its rates
  c.d_lr = 8e-4
  c.num_train_steps = 1000  # 2 steps/s on the 2-core CPU (one device per core)
  c.bn_momentum = 0.99  # a short run: let the raw G's moving BN statistics keep up
  c.ema_decay = 0.99
  c.ema_start_step = 800
  c.log_every_steps = 50
  c.sample_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 500  # and at the last step; the floor is logged before the first
  c.eval_num_samples = 5_000
  return c
