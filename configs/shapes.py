"""The embedded `sagan_shapes` dataset (drawn shapes and textures in random colours) in
under 10 minutes on 2 CPU cores; no download. Evaluates itself every 500 steps with the
shipped classifier. It was the quickstart before the real digits (configs/quickstart.py);
SAGAN collapses its within-class colours (BENCHMARKS_LOG.md, "What D sees of colour").

  python main.py --config=configs/shapes.py --workdir=/tmp/sagan_shapes

Every value below was chosen by the ablations in BENCHMARKS_LOG.md ("Quickstart ablations").
"""
from sagan_jax.config import default_config


def get_config():
  c = default_config()
  c.dataset = 'sagan_shapes'
  c.image_size = 32
  c.num_classes = 10
  c.ch = 16  # 64 channels in every block: ch 8 is 3x faster per step but learns slower
  #   per step; at equal minutes ch 16 led on accuracy and distance
  c.z_dim = 64
  c.attention_resolution = 16
  c.batch_size = 32
  c.g_lr = 2e-4  # TTUR 1:4 as in the paper, at twice its rates: G 4e-4 learned the classes
  c.d_lr = 8e-4  #   faster but lost their variety; G 1e-4 kept it and learned too slowly
  c.num_train_steps = 1000
  c.bn_momentum = 0.99  # a short run: let the raw G's moving BN statistics keep up
  c.ema_decay = 0.99  # a window of ~100 steps over the last 200: a longer one, started
  c.ema_start_step = 800  #   earlier, still averaged the fast early weights
  c.log_every_steps = 50
  c.sample_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 500  # and at the last step; the floor is logged before the first
  c.eval_num_samples = 5_000
  return c
