"""Converts pytorch-fid's FID Inception weights to the .npz sagan_jax loads.

  pip install torch   # only for this command
  python -m sagan_jax.convert_inception \
      --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

Get the .pth from pytorch-fid's GitHub releases (the URL is FID_WEIGHTS_URL in
pytorch_fid/inception.py). Nothing here downloads it.
"""
import os

import numpy as np
from absl import app, flags

from sagan_jax import inception

flags.DEFINE_string('pth', None, "pytorch-fid's weight file (pt_inception-2015-12-05-*.pth).")
flags.DEFINE_string('out', None, 'The .npz to write.')
flags.mark_flags_as_required(['pth', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not os.path.exists(FLAGS.pth):
    raise app.UsageError(f'--pth={FLAGS.pth} does not exist')
  try:
    import torch
  except ImportError:
    raise app.UsageError('the converter reads a PyTorch file: pip install torch') from None
  state = torch.load(FLAGS.pth, map_location='cpu', weights_only=True)
  arrays = inception.from_pytorch_fid({k: v.numpy() for k, v in state.items()})
  with open(FLAGS.out, 'wb') as f:
    np.savez(f, **arrays)
  inception.load_params(FLAGS.out)  # checks every name and shape
  print(f'Wrote {FLAGS.out}: {len(arrays)} arrays, '
        f'{sum(a.size for a in arrays.values()):,} parameters')


if __name__ == '__main__':
  app.run(main)
