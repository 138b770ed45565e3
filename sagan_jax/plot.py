"""Pictures of a training run, for people: curves, samples over time, attention.

  python -m sagan_jax.plot --workdir=/tmp/sagan_quickstart

writes into WORKDIR/plots (or --out):
  curves.png     from metrics.jsonl: both losses, D's mean output on real and
                 fake, the attention gammas, the range of spectral norms sigma
                 of G's and D's raw weights, and every evaluation metric (raw
                 and EMA G) over the steps;
  samples.png    the EMA G's fixed-noise grids (WORKDIR/samples) at up to
                 --num_grids steps, side by side;
  attention.png  for a few samples of the latest checkpoint's EMA G, where one
                 query pixel attends in G's and in D's attention block (D looks
                 at the generated image), with a colour scale.
"""
import json

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags
from etils import epath
from PIL import Image

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from sagan_jax import checkpoint, modes  # noqa: E402
from sagan_jax.models import make_models  # noqa: E402

PANELS = (  # title, metric-name predicate
    ('losses', lambda k: k in ('d_loss', 'g_loss')),
    ('D output on real and fake', lambda k: k in ('d_real', 'd_fake')),
    ('attention gamma', lambda k: k.startswith('gamma/')),
    ('spectral norm sigma of raw weights', lambda k: k.startswith('sigma/')),
)
EVAL_PANELS = (  # metric suffix, title, log scale
    ('class_accuracy', 'class accuracy', False),
    ('frechet_distance', 'Frechet distance (classifier)', True),
    ('fid', 'FID', True),
    ('precision', 'precision (k=3)', False),
    ('recall', 'recall (k=3)', False),
    ('diversity_vs_data', 'within-class feature diversity / data', False),
    ('colour_diversity_vs_data', 'within-class colour diversity / data', False),
)


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (steps, values)} from WORKDIR/metrics.jsonl."""
  series = {}
  for line in (epath.Path(workdir) / 'metrics.jsonl').read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      for k, v in row.items():
        if k != 'step':
          series.setdefault(k, ([], []))
          series[k][0].append(row['step'])
          series[k][1].append(v)
  return {k: (np.asarray(s), np.asarray(v, np.float64)) for k, (s, v) in series.items()}


def plot_curves(series: dict, path) -> None:
  panels = [(t, sorted(k for k in series if want(k))) for t, want in PANELS]
  for suffix, title, log in EVAL_PANELS:
    names = [f'eval/{g}/{suffix}' for g in ('ema', 'raw') if f'eval/{g}/{suffix}' in series]
    if names:
      panels.append((title, names, log))
  panels = [p if len(p) == 3 else (*p, False) for p in panels if p[1]]
  cols = 3
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
  for ax, (title, names, log) in zip(axes.flat, panels):
    for name in names:
      steps, values = series[name]
      ax.plot(steps, values, label=name.replace('eval/', ''),
              marker='o' if len(steps) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel('step')
    if log:
      ax.set_yscale('log')
    if title == 'class accuracy' or title.endswith('/ data'):
      ax.axhline(1.0, color='grey', lw=0.8, ls='--')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  _save(fig, path)


def plot_samples(workdir: str, path, num_grids: int, generator: str = 'ema') -> None:
  files = sorted((epath.Path(workdir) / 'samples').glob(f'*_{generator}.png'))
  if len(files) > num_grids:  # evenly spread, always the first and the last
    files = [files[i] for i in np.linspace(0, len(files) - 1, num_grids).round().astype(int)]
  fig, axes = plt.subplots(1, len(files), figsize=(3.2 * len(files), 4.2), squeeze=False)
  for ax, f in zip(axes[0], files):
    with f.open('rb') as fp:
      ax.imshow(np.asarray(Image.open(fp)))
    ax.set_title(f'step {int(f.name.split("_")[0]):,}')
    ax.axis('off')
  fig.tight_layout()
  _save(fig, path)


def plot_attention(workdir: str, path, classes: str, seed: int) -> None:
  """Rows: samples. Columns: the sample with its query, G's map, D's map."""
  s = modes.Sampler(workdir, modes.Options(seed=seed))
  config = s.config
  chosen = modes.parse_classes(classes, config.num_classes, config.sample_classes)
  z = s.latents(0, len(chosen), 0.0)
  images, g_maps = s.images_and_weights(z, jnp.asarray(chosen, jnp.int32))
  discriminator = make_models(config)[1]
  d_vars = checkpoint.restore_discriminator(workdir, s.mesh, s.step)
  _, d_state = jax.jit(lambda v, x, y: discriminator.apply(v, x, y, mutable=['intermediates']))(
      d_vars, images.astype(np.float32) / 127.5 - 1, jnp.asarray(chosen, jnp.int32))
  d_maps = {'/'.join(p.key for p in path if hasattr(p, 'key') and p.key != 'beta'): np.asarray(b)
            for path, b in jax.tree_util.tree_flatten_with_path(d_state['intermediates'])[0]}
  size = config.image_size
  query = (size // 2, size // 2 - size // 8)  # (y, x), left of the centre
  maps = [('G', m) for m in g_maps.values()] + [('D', m) for m in d_maps.values()]
  fig, axes = plt.subplots(len(chosen), 1 + len(maps), figsize=(3.3 * (1 + len(maps)),
                                                                  3 * len(chosen)), squeeze=False)
  for i in range(len(chosen)):
    axes[i, 0].imshow(images[i])
    axes[i, 0].plot(query[1], query[0], 'o', ms=8, mfc='none', mec='lime', mew=2)
    axes[i, 0].set_title(f'class {chosen[i]}, query (y={query[0]}, x={query[1]})', fontsize=8)
    for j, (net, beta) in enumerate(maps):
      weights = modes.query_maps(beta[i:i + 1], [query], size)[0, 0]
      ax = axes[i, j + 1]
      ax.imshow(images[i], alpha=0.35, extent=(0, size, size, 0))
      im = ax.imshow(weights, cmap='inferno', alpha=0.75, extent=(0, size, size, 0))
      ax.plot(query[1], query[0], 'o', ms=8, mfc='none', mec='lime', mew=2)
      ax.set_title(f'{net} attention: weight of each key', fontsize=8)
      fig.colorbar(im, ax=ax, fraction=0.046)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f'Step {s.step:,}: where the query pixel attends (keys over the image)')
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path) -> None:
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.verbose:
    from sagan_jax import logs
    logs.quiet_console()
  out = epath.Path(f.out or epath.Path(f.workdir) / 'plots')
  out.mkdir(parents=True, exist_ok=True)
  plot_curves(read_metrics(f.workdir), out / 'curves.png')
  plot_samples(f.workdir, out / 'samples.png', f.num_grids)
  written = [out / 'curves.png', out / 'samples.png']
  if checkpoint.checkpoint_dir(f.workdir).exists():
    plot_attention(f.workdir, out / 'attention.png', f.classes, f.seed)
    written.append(out / 'attention.png')
  for path in written:
    print(f'Wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'The directory a training run wrote.')
  flags.DEFINE_string('out', '', 'Output directory (default: WORKDIR/plots).')
  flags.DEFINE_integer('num_grids', 5, 'Sample grids in samples.png.')
  flags.DEFINE_string('classes', '0,2,6,9', 'Classes of the attention samples.')
  flags.DEFINE_integer('seed', 0, 'Noise of the attention samples.')
  flags.DEFINE_bool('verbose', False, "Also the libraries' INFO and WARNING lines (Orbax).")
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
