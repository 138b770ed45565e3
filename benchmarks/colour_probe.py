"""Why does a `sagan_shapes` run lose its colours? D's view of colour, from checkpoints.

  python benchmarks/colour_probe.py WORKDIR --steps=1000,2000

For each checkpoint of a run on the embedded dataset (issue 16), with the raw G in
training mode (batch statistics, as D sees it in training):
- D's score of G's samples and of real-style images of the same class (the dataset's own
  masks), the real ones drawn with a sweep of foreground colours: how far D puts fakes
  from reals, how much of that colour could explain, and where G's colour ranks.
- The hinge margins: the share of reals scored above 1 and of fakes below -1, which give
  D no gradient.
- D's pull on each sample's foreground colour (the gradient of D(x, y) with respect to a
  shift of every foreground pixel), split into the pull shared by a class's samples and
  the part that grows with a sample's distance from its class's mean colour (the slope):
  a positive slope spreads the colours, a negative one draws them together.
Prints one JSON line per step.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sagan_jax import checkpoint
from sagan_jax import shapes_dataset as sd
from sagan_jax.mesh import make_mesh
from sagan_jax.models import make_models


def real_sweep(label: int, colours: np.ndarray, n_masks: int, rng) -> np.ndarray:
  """[n_masks * len(colours), S, S, 3] in [-1, 1]: each mask of `label` in every colour."""
  masks = [sd._mask(label, rng)[..., None] for _ in range(n_masks)]
  backgrounds = rng.uniform(0.0, 0.3, (n_masks, 3))
  images = [np.where(m, f, b) for m, b in zip(masks, backgrounds) for f in colours]
  return np.stack(images).astype(np.float32) * 2 - 1


def probe(workdir: str, step: int, mesh, n_fake: int, n_masks: int, n_colours: int) -> dict:
  g_vars, config, _ = checkpoint.restore_generator(workdir, mesh, step, ema=False)
  d_vars = checkpoint.restore_discriminator(workdir, mesh, step)
  generator, discriminator = make_models(config)
  g = jax.jit(lambda z, y: generator.apply(g_vars, z, y, train=True, mutable=['batch_stats'])[0])
  d = jax.jit(lambda x, y: discriminator.apply(d_vars, x, y))
  d_grad = jax.jit(jax.vmap(jax.grad(lambda x, y: discriminator.apply(d_vars, x[None], y[None])[0])))

  labels = np.arange(n_fake) % config.num_classes
  z = jax.random.normal(jax.random.PRNGKey(step), (n_fake, config.z_dim))
  b = config.batch_size  # G's batch statistics over a training-sized mixed batch
  fakes = np.concatenate([g(z[i:i + b], jnp.asarray(labels[i:i + b])) for i in range(0, n_fake, b)])
  d_fake = np.asarray(d(fakes, labels))
  grads = np.asarray(d_grad(fakes, jnp.asarray(labels)))
  fg_colour, has_both = sd.colours(np.round((fakes + 1) * 127.5).astype(np.uint8))
  fg = ((fakes + 1) / 2).mean(-1, keepdims=True) > 0.375  # shapes_dataset.colours' rule
  # dD / d(the same shift of every foreground pixel) [n, 3], per unit of [0, 1] colour
  pull = 2 * (grads * fg).sum((1, 2))

  rng = np.random.default_rng(0)
  sweep = rng.uniform(0.45, 1.0, (n_colours, 3))  # the dataset's foreground colours
  rows = []
  for c in range(config.num_classes):
    real = real_sweep(c, sweep, n_masks, rng)
    d_real = np.asarray(d(real, np.full(len(real), c))).reshape(n_masks, n_colours)
    by_colour = d_real.mean(0)
    mine = (labels == c) & has_both
    g_colour = fg_colour[mine, :3]
    nearest = np.argmin(((sweep - g_colour.mean(0)) ** 2).sum(1))
    dev = g_colour - g_colour.mean(0)
    dev_pull = pull[mine] - pull[mine].mean(0)
    rows.append(dict(
        d_real=d_real.mean(), d_fake=d_fake[labels == c].mean(),
        real_sd_over_colours=by_colour.std(), real_sd_over_shapes=d_real.std(0).mean(),
        rank_of_g_colour=(by_colour < by_colour[nearest]).mean(),
        real_beyond_margin=(d_real > 1).mean(), fake_beyond_margin=(d_fake[labels == c] < -1).mean(),
        g_colour_sd=np.sqrt((dev ** 2).sum(1).mean()),  # [0, 1] units
        shared_pull=np.linalg.norm(pull[mine].mean(0)),
        slope=(dev * dev_pull).sum() / max((dev * dev).sum(), 1e-12)))
  out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != 'slope'}
  out['slope_median'] = float(np.median([r['slope'] for r in rows]))
  out['slopes'] = [round(float(r['slope']), 2) for r in rows]
  # The pull that spreads a typical sample, as a fraction of the pull it shares.
  out['spreading_vs_shared'] = out['slope_median'] * out['g_colour_sd'] / out['shared_pull']
  return {'step': step, **{k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('workdir')
  parser.add_argument('--steps', required=True, help='comma-separated checkpoint steps')
  parser.add_argument('--fakes', type=int, default=1024)
  parser.add_argument('--masks', type=int, default=16, help='real masks per class')
  parser.add_argument('--colours', type=int, default=48, help='foreground colours swept')
  args = parser.parse_args()
  mesh = make_mesh()
  for step in args.steps.split(','):
    print(json.dumps(probe(args.workdir, int(step), mesh, args.fakes, args.masks, args.colours)))


if __name__ == '__main__':
  main()
