"""The sample, interpolate and attention modes, standing statistics and
TensorBoard logging, on the tiny checkpoints the `runs` fixture trains."""
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sagan_jax import checkpoint, modes, sampling, train
from sagan_jax.models import make_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png(path) -> np.ndarray:
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB'))


def test_sample_mode_grid_export_and_determinism(runs, tmp_path):
  workdir = runs[1]
  options = lambda name, **kw: modes.Options(classes='1,3', per_class=3, export_samples=5,
                                             out=str(tmp_path / name), **kw)
  grid, npz = modes.sample(workdir, options('a', format='npz'))
  assert grid.endswith('grid_ema_0000004.png')
  assert png(grid).shape == (2 * 34 * 2, 3 * 34 * 2, 3)  # 2 class rows, 3 columns, x2
  export = np.load(npz, allow_pickle=False)
  assert export['images'].shape == (5, 32, 32, 3) and export['images'].dtype == np.uint8
  assert export['labels'].tolist() == [1, 3, 1, 3, 1]
  # The same seed gives the same files; another seed, truncation, or raw G others.
  modes.sample(workdir, options('b', format='png'))
  files = sorted(os.listdir(tmp_path / 'b' / 'samples'))
  assert files == [f'{i:06d}_class{c}.png' for i, c in enumerate([1, 3, 1, 3, 1])]
  np.testing.assert_array_equal(np.stack([png(tmp_path / 'b' / 'samples' / f) for f in files]),
                                export['images'])
  assert png(tmp_path / 'b' / 'grid_ema_0000004.png').tolist() == png(grid).tolist()
  for name, kw in (('seed', dict(seed=1)), ('trunc', dict(truncation=0.5)),
                   ('raw', dict(generator='raw'))):
    other = modes.sample(workdir, options(name, format='npz', **kw))[1]
    assert not np.array_equal(np.load(other)['images'], export['images']), name


def test_only_process_0_of_a_pod_writes_a_modes_files(runs, tmp_path, monkeypatch):
  """Every process of a pod computes the same images; one writes them (on GCS, concurrent
  writers of one object would each upload it)."""
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  for fmt in ('png', 'npz'):
    modes.sample(runs[1], modes.Options(classes='1', per_class=2, export_samples=2,
                                        format=fmt, out=str(tmp_path / fmt)))
  modes.evaluate(runs[1], modes.Options(eval_samples=20, out=str(tmp_path / 'eval')))
  written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
  assert written == [], written


def test_truncation_redraws_large_values():
  z = sampling.latents(jax.random.PRNGKey(0), 4000, 8, truncation=0.5)
  assert float(jnp.abs(z).max()) <= 0.5
  # E|z| of N(0, 1) truncated to [-t, t] is 2 (phi(0) - phi(t)) / (2 Phi(t) - 1) = 0.2448.
  assert abs(float(jnp.abs(z).mean()) - 0.2448) < 0.003


def test_standing_statistics_average_per_batch_statistics(runs):
  mesh = train.make_mesh()
  variables, config, _ = checkpoint.restore_generator(runs[1], mesh)
  generator = make_models(config)[0]
  key = jax.random.PRNGKey(3)
  one = sampling.StandingStatistics(config, generator, mesh, 1, 8)
  two = sampling.StandingStatistics(config, generator, mesh, 2, 8)
  # Batch i is drawn from fold_in(key, i); each batch's own statistics, measured directly:
  z0, y0 = sampling.random_batch(jax.random.fold_in(key, 0), 8, config)
  z1, y1 = sampling.random_batch(jax.random.fold_in(key, 1), 8, config)
  alone = [generator.clone(bn_momentum=0.0).apply(variables, z, y, train=True,
                                                  mutable=['batch_stats'])[1]['batch_stats']
           for z, y in ((z0, y0), (z1, y1))]
  both = two(variables, key)
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(c, (a + b) / 2, rtol=1e-5, atol=1e-6),
               alone[0], alone[1], both['batch_stats'])
  # Statistics of one batch: inference on that batch is training-mode G on it.
  first = one(variables, key)
  trained, _ = generator.apply(variables, z0, y0, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(generator.apply(first, z0, y0, train=False), trained, atol=2e-5)
  assert not np.allclose(generator.apply(variables, z0, y0, train=False), trained, atol=1e-3)


def test_interpolate_mode_strips(runs, tmp_path):
  options = modes.Options(classes='0,2,5', strip_images=4, out=str(tmp_path))
  z_path, class_path = modes.interpolate(runs[1], options)
  for path in (z_path, class_path):
    assert png(path).shape == (3 * 34 * 2, 4 * 34 * 2, 3)  # 3 rows of 4 images, x2
  again = modes.interpolate(runs[1], modes.Options(classes='0,2,5', strip_images=4,
                                                   out=str(tmp_path / 'again')))
  assert [png(p).tolist() for p in again] == [png(z_path).tolist(), png(class_path).tolist()]
  # The class strip starts at class a and ends at class b (one-hot rows of the CBN tables).
  s = modes.Sampler(runs[1], options)
  z = s.latents(0, 6, 0.0).reshape(3, 2, -1)[:, 0]
  strip = png(class_path)[::2, ::2]
  first = lambda row, col: strip[row * 34 + 1:row * 34 + 33, col * 34 + 1:col * 34 + 33]
  ends = s.images(z, jnp.array([0, 2, 5])), s.images(z, jnp.array([2, 5, 0]))
  for row in range(3):
    assert np.abs(first(row, 0).astype(int) - ends[0][row]).max() <= 1
    assert np.abs(first(row, 3).astype(int) - ends[1][row]).max() <= 1


def test_attention_mode_draws_the_softmax_weights(runs, tmp_path):
  queries = [(8, 8), (20, 28)]
  options = modes.Options(classes='4', per_class=2, queries='8,8;20,28', out=str(tmp_path))
  written, images, maps = modes.attention(runs[1], options)
  assert [os.path.basename(p) for p in written] == ['attention_ema_0000004.png']
  assert png(written[0]).shape == (2 * 34 * 2, 3 * 34 * 2, 3)  # 2 samples x (sample + 2 maps)
  options_again = modes.Options(classes='4', per_class=2, queries='8,8;20,28',
                                out=str(tmp_path / 'again'))
  assert png(modes.attention(runs[1], options_again)[0][0]).tolist() == png(written[0]).tolist()
  # beta straight from G: 16x16 queries, 8x8 pooled keys.
  s = modes.Sampler(runs[1], options)
  z = s.latents(0, 2, 0.0)
  _, state = s.generator.apply(s.variables, z, jnp.array([4, 4]), train=False,
                               mutable=['intermediates'])
  beta = np.asarray(state['intermediates']['attention']['beta'][0])  # [2, 256, 64]
  drawn = png(written[0])[::2, ::2].astype(int)  # undo the x2
  for i in range(2):
    for q, (qy, qx) in enumerate(queries):
      weights = beta[i, (qy // 2) * 16 + qx // 2].reshape(8, 8)
      np.testing.assert_allclose(maps['attention'][i, q], weights, rtol=1e-5)
      panel = drawn[i * 34 + 1:i * 34 + 33, (q + 1) * 34 + 1:(q + 1) * 34 + 33]
      heat = (panel[..., 0] - panel[..., 2]) / 255 + 0.5  # see modes.overlay
      expected = np.kron(weights / weights.max(), np.ones((4, 4)))
      np.testing.assert_allclose(heat, expected, atol=1.01 / 255)


def test_modes_reject_bad_input_with_the_fix(runs, tmp_path):
  with pytest.raises(modes.ModeError, match=r"class 12 is out of range; this model has 10 "
                                            r"classes, 0 to 9"):
    modes.sample(runs[1], modes.Options(classes='3,12', out=str(tmp_path)))
  with pytest.raises(modes.ModeError, match='pixel .* is outside the 32x32 image'):
    modes.attention(runs[1], modes.Options(queries='8,40', out=str(tmp_path)))
  with pytest.raises(checkpoint.CheckpointError, match=r'no checkpoint of step 7 .* \[2, 4\]'):
    modes.sample(runs[1], modes.Options(checkpoint_step=7, out=str(tmp_path)))
  with pytest.raises(modes.ModeError, match="--generator='avg': one of 'ema', 'raw'"):
    modes.sample(runs[1], modes.Options(generator='avg'))
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint in .*: train first'):
    modes.interpolate(str(tmp_path / 'empty'), modes.Options())
  result = subprocess.run(
      [sys.executable, 'main.py', '--mode=sample', f'--workdir={runs[1]}', '--classes=3,12',
       f'--out={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "Error: --classes='3,12': class 12 is out of range; this model has 10 classes, 0 to 9")


def test_tensorboard_has_the_scalars_and_sample_grids(runs):
  logdir = os.path.join(runs[0], 'tensorboard')
  scalars, images = {}, {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if value.metadata.plugin_data.plugin_name == 'images':
          images.setdefault(value.tag, {})[event.step] = tensor
        else:
          scalars.setdefault(value.tag, {})[event.step] = float(tensor)
  expected = {'d_loss', 'g_loss', 'd_real', 'd_fake', 'gamma/G/attention', 'gamma/D/attention',
              'd_grad_norm', 'g_grad_norm', 'g_lr', 'd_lr', 'images_per_s', 'steps_per_s',
              'skipped_steps'} | {f'sigma/{n}/{s}' for n in 'GD' for s in ('min', 'mean', 'max')}
  assert expected <= set(scalars), expected - set(scalars)
  assert all(sorted(scalars[tag]) == [1, 2, 3, 4] for tag in expected)
  assert scalars['d_lr'][4] == pytest.approx(4e-4) and scalars['sigma/D/max'][4] > 0
  # The same numbers in metrics.jsonl.
  import json
  lines = [json.loads(line) for line in open(os.path.join(runs[0], 'metrics.jsonl'))]
  assert lines[-1]['g_loss'] == pytest.approx(scalars['g_loss'][4])
  assert set(images) == {'samples/raw', 'samples/ema'}
  assert sorted(images['samples/ema']) == [0, 2, 4]
  # Encoded PNG of the grid; it matches the grid written to samples/.
  encoded = images['samples/ema'][4][2]  # [width, height, png bytes]
  grid = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'))
  np.testing.assert_array_equal(grid, png(os.path.join(runs[0], 'samples',
                                                       '0000004_ema.png'))[::2, ::2])


def test_plot_draws_curves_samples_and_attention_of_g_and_d(runs, tmp_path):
  from sagan_jax import plot
  series = plot.read_metrics(runs[1])
  steps, losses = series['d_loss']
  assert steps.tolist() == [1, 2, 3, 4] and np.isfinite(losses).all()  # every step once
  plot.plot_curves(series, tmp_path / 'curves.png')
  plot.plot_samples(runs[1], tmp_path / 'samples.png', num_grids=2)
  plot.plot_attention(runs[1], tmp_path / 'attention.png', '0,1', seed=0)
  for name in ('curves', 'samples', 'attention'):
    image = png(tmp_path / f'{name}.png')
    assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 10, name
