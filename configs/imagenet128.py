"""The paper's ImageNet 128x128 setup (SAGAN, Table 2; authors' code where they differ).

  python main.py --config=configs/imagenet128.py --workdir=$WORKDIR \
      --config.data_dir=$TFDS_DATA_DIR
"""
from sagan_jax.config import default_config


def get_config():
  c = default_config()
  c.dataset = 'imagenet2012'  # needs the manual download (see README)
  c.image_size = 128
  c.num_classes = 1000
  c.ch = 64
  c.attention_resolution = 64  # the paper's 'feat64' (authors' default code path: 32)
  c.batch_size = 256
  c.num_train_steps = 1_000_000  # the paper's ablations; the authors' code stops at 2M
  c.log_every_steps = 500
  c.sample_every_steps = 10_000
  return c
