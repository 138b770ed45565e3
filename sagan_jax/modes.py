"""main.py's sample, interpolate, attention and eval modes, on a checkpoint, and
its reference mode, on a config.

Every checkpoint mode loads only G (EMA or raw weights) from WORKDIR/checkpoints onto the
current devices, takes its config from the checkpoint, and writes into --out
(default WORKDIR/<mode>). The same options and seed give the same files.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import checkpoint, logs, metrics, sampling
from sagan_jax.config import class_indices, validate
from sagan_jax.models import make_models
from sagan_jax.mesh import make_mesh
from sagan_jax.options import Options


class ModeError(ValueError):
  """An option a mode cannot run with; the message names it and what is allowed."""


def parse_classes(spec: str, num_classes: int, default: int) -> list[int]:
  if not spec:
    return list(range(min(default, num_classes)))
  try:
    return class_indices(spec, num_classes)
  except ValueError as e:
    raise ModeError(f'--classes={spec!r}: {e}') from None


def parse_queries(spec: str, size: int) -> list[tuple[int, int]]:
  if not spec:
    a, b = size // 4, 3 * size // 4
    return [(a, a), (a, b), (b, a), (b, b)]
  try:
    queries = [tuple(int(v) for v in q.split(',')) for q in spec.split(';')]
    assert all(len(q) == 2 for q in queries)
  except (ValueError, AssertionError):
    raise ModeError(f'--queries={spec!r}: give pixels as y,x;y,x') from None
  bad = [q for q in queries if not all(0 <= v < size for v in q)]
  if bad:
    raise ModeError(f'--queries={spec!r}: pixel {bad[0]} is outside the {size}x{size} image')
  return queries


class Sampler:
  """G from a checkpoint on all devices; `images(z, y)` -> uint8 [n, S, S, 3]."""

  def __init__(self, workdir: str, options: Options):
    for field in dataclasses.fields(Options):  # the choices main.py's flags enforce
      value, choices = getattr(options, field.name), field.metadata['choices']
      if choices and value not in choices:
        raise ModeError(f'--{field.name}={value!r}: one of {", ".join(map(repr, choices))}')
    self.mesh = make_mesh()
    self.variables, self.config, self.step = checkpoint.restore_generator(
        workdir, self.mesh, options.checkpoint_step, ema=options.generator == 'ema',
        best=options.best)
    self.generator = make_models(self.config)[0]
    self.key = jax.random.PRNGKey(options.seed)
    if options.standing_stats:
      standing = sampling.StandingStatistics(self.config, self.generator, self.mesh,
                                             options.standing_stats, options.sample_batch_size)
      self.variables = standing(self.variables, jax.random.fold_in(self.key, 1))
    self.image_sampler = sampling.ImageSampler(self.generator, self.mesh)
    self._apply_with_maps = jax.jit(
        lambda v, z, y: self.generator.apply(v, z, y, train=False, mutable=['intermediates']),
        out_shardings=NamedSharding(self.mesh, P()))

  def images(self, z, y) -> np.ndarray:
    return self.image_sampler(self.variables, z, y)

  def images_and_weights(self, z, y):
    """(uint8 images, {block name: beta [n, N, M]}) for every attention block of G."""
    images, state = self._apply_with_maps(self.variables, z, y)
    weights = {}
    for path, beta in jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]:
      weights['/'.join(p.key for p in path if hasattr(p, 'key') and p.key != 'beta')] = (
          np.asarray(beta))
    return sampling.to_uint8(images), weights

  def latents(self, index: int, n: int, truncation: float):
    return sampling.latents(jax.random.fold_in(self.key, index), n, self.config.z_dim,
                            truncation)


def _out_dir(workdir: str, mode: str, options: Options) -> epath.Path:
  out = epath.Path(options.out or epath.Path(workdir) / mode)
  out.mkdir(parents=True, exist_ok=True)
  return out


def _scale(size: int) -> int:
  return max(1, 64 // size)


def sample(workdir: str, options: Options) -> list[str]:
  """A grid (one row per class) and, with export_samples, an export for FID tools."""
  s = Sampler(workdir, options)
  classes = parse_classes(options.classes, s.config.num_classes, s.config.sample_classes)
  per_class = options.per_class or s.config.samples_per_class
  out = _out_dir(workdir, 'sample', options)
  z = s.latents(0, len(classes) * per_class, options.truncation)
  y = jnp.repeat(jnp.asarray(classes, jnp.int32), per_class)
  grid = out / f'grid_{options.generator}_{s.step:07d}.png'
  sampling.save_grid(s.images(z, y), len(classes), grid, _scale(s.config.image_size))
  written = [str(grid)]
  if options.export_samples:
    written.append(export(s, classes, options, out))
  return written


def export(s: Sampler, classes: list[int], options: Options, out: epath.Path) -> str:
  """export_samples images, classes in turn: PNG files or one npz of uint8 NHWC + labels."""
  n, batch = options.export_samples, options.sample_batch_size
  progress = logs.Progress('sampled', n, 'images')
  if options.format == 'png':
    (out / 'samples').mkdir(exist_ok=True)
  images, labels = [], []
  for i, start in enumerate(range(0, n, batch)):
    count = min(batch, n - start)
    y = np.asarray(classes, np.int32)[np.arange(start, start + count) % len(classes)]
    x = s.images(s.latents(1000 + i, count, options.truncation), jnp.asarray(y))
    if options.format == 'png':
      for j in range(count):
        sampling.save_png(x[j], out / 'samples' / f'{start + j:06d}_class{y[j]}.png')
    else:
      images.append(x)
      labels.append(y)
    logging.info(progress.line(start + count))
  if options.format == 'npz':
    path = out / f'samples_{options.generator}_{s.step:07d}.npz'
    if jax.process_index() == 0:  # every process has the images; one writes them
      with path.open('wb') as f:
        np.savez(f, images=np.concatenate(images), labels=np.concatenate(labels))
    return str(path)
  return str(out / 'samples')


def interpolate(workdir: str, options: Options) -> list[str]:
  """Strips of `strip_images` images: in z within each class, and between class
  embeddings (the CBN gains and biases of class a to those of class b) at fixed z."""
  s = Sampler(workdir, options)
  classes = parse_classes(options.classes, s.config.num_classes, s.config.sample_classes)
  out, rows, steps = _out_dir(workdir, 'interpolate', options), len(classes), options.strip_images
  t = jnp.linspace(0.0, 1.0, steps)[None, :, None]  # [1, steps, 1]
  ends = s.latents(0, 2 * rows, options.truncation).reshape(rows, 2, -1)
  z = ((1 - t) * ends[:, :1] + t * ends[:, 1:]).reshape(rows * steps, -1)
  y = jnp.repeat(jnp.asarray(classes, jnp.int32), steps)
  z_path = out / f'z_{options.generator}_{s.step:07d}.png'
  sampling.save_grid(s.images(z, y), rows, z_path, _scale(s.config.image_size))
  # Row r goes from classes[r] to classes[r + 1] (cyclically) at one z.
  one_hot = jax.nn.one_hot(jnp.asarray(classes), s.config.num_classes)
  y = ((1 - t) * one_hot[:, None] + t * jnp.roll(one_hot, -1, axis=0)[:, None]).reshape(
      rows * steps, -1)
  z = jnp.repeat(ends[:, 0], steps, axis=0)
  class_path = out / f'class_{options.generator}_{s.step:07d}.png'
  sampling.save_grid(s.images(z, y), rows, class_path, _scale(s.config.image_size))
  return [str(z_path), str(class_path)]


QUERY_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 0],
                          [255, 0, 255], [0, 255, 255]], np.uint8)


def query_maps(beta: np.ndarray, queries, size: int) -> np.ndarray:
  """beta [n, N, M] -> each query pixel's weights over the keys, [n, Q, hk, wk]."""
  h, hk = int(round(beta.shape[1] ** 0.5)), int(round(beta.shape[2] ** 0.5))
  index = [(qy * h // size) * h + qx * h // size for qy, qx in queries]
  return beta[:, index].reshape(beta.shape[0], len(queries), hk, hk)


def overlay(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """A heat map of `weights` [hk, wk] over the image [S, S, 3]: half the image's
  grey, plus heat h = weights / max in red and 1 - h in blue (so h = (R - B) /
  255 + 1/2)."""
  size = image.shape[0]
  heat = np.repeat(np.repeat(weights / weights.max(), size // weights.shape[0], 0),
                   size // weights.shape[1], 1)
  grey = image.astype(np.float32).mean(-1) / 2
  rgb = np.stack([grey + 127.5 * heat, grey, grey + 127.5 * (1 - heat)], -1)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def attention(workdir: str, options: Options):
  """For each attention block of G, one PNG: a row per sample, the sample with
  its query pixels marked, then each query's attention map over the image."""
  s = Sampler(workdir, options)
  classes = parse_classes(options.classes, s.config.num_classes, s.config.sample_classes)
  per_class = options.per_class or 1
  size = s.config.image_size
  queries = parse_queries(options.queries, size)
  if len(queries) > len(QUERY_COLOURS):
    raise ModeError(f'--queries: at most {len(QUERY_COLOURS)} query pixels')
  out = _out_dir(workdir, 'attention', options)
  z = s.latents(0, len(classes) * per_class, options.truncation)
  y = jnp.repeat(jnp.asarray(classes, jnp.int32), per_class)
  images, weights = s.images_and_weights(z, y)
  marked = images.copy()
  for (qy, qx), colour in zip(queries, QUERY_COLOURS):
    marked[:, max(qy - 1, 0):qy + 2, max(qx - 1, 0):qx + 2] = colour
  written, maps = [], {}
  for block, beta in weights.items():
    maps[block] = query_maps(beta, queries, size)
    panels = [[marked[i]] + [overlay(images[i], m) for m in maps[block][i]]
              for i in range(len(images))]
    path = out / f'{block.replace("/", "_")}_{options.generator}_{s.step:07d}.png'
    sampling.save_grid(np.stack([p for row in panels for p in row]), len(images), path,
                       _scale(size))
    written.append(str(path))
  return written, images, maps


def _check_eval_samples(num: int):
  if num < metrics.MIN_SAMPLES:
    raise ModeError(f'--eval_samples={num}: at least {metrics.MIN_SAMPLES} '
                    f'({metrics.MIN_SAMPLES_WHY})')


def evaluate(workdir: str, options: Options) -> list[str]:
  """FID, IS, KID (and, with the classifier, class accuracy) of eval_samples
  (default 50,000) samples against the dataset's train split; prints them and
  writes them as JSON."""
  _check_eval_samples(options.eval_samples)  # before TensorFlow's import
  from sagan_jax import evaluation  # here: it loads TensorFlow, which the other modes do not need
  s = Sampler(workdir, options)
  config = s.config
  try:
    extractor = evaluation.make_extractor(config, s.mesh, options.features,
                                          options.inception_weights, options.classifier_weights)
  except FileNotFoundError as e:
    raise ModeError(str(e)) from None
  kind = extractor.kind
  num = options.eval_samples
  spec = options.intra_class or config.eval_intra_class
  if spec and num < 2 * config.num_classes:
    raise ModeError(f'--intra_class needs at least 2 samples of each class: '
                    f'--eval_samples={2 * config.num_classes} or more')
  try:
    reference, class_ref, classes = evaluation.references(
        config, extractor, num, evaluation.reference_dir(config, workdir), spec)
  except ValueError as e:
    raise ModeError(f'--intra_class={spec!r}: {e}') from None
  result = evaluation.evaluate(s.image_sampler, s.variables, config, extractor, reference, num,
                               options.sample_batch_size, options.seed, class_ref, classes)
  result = {'step': s.step, 'generator': options.generator, 'features': kind, **result}
  out = _out_dir(workdir, 'eval', options) / f'{kind}_{options.generator}_{s.step:07d}.json'
  if jax.process_index() == 0:  # every process has the metrics; one writes them
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
  return [str(out)]


def reference(config, workdir: str, options: Options) -> list[str]:
  """Fills the reference directory that runs of `config` read (config.reference_dir,
  else WORKDIR/reference_stats) with the statistics of eval_samples train images,
  and per class with intra_class, ahead of the runs. On every process of a pod at
  once, like the other modes: the features are computed on all devices."""
  validate(config, jax.device_count(), jax.process_count())
  _check_eval_samples(options.eval_samples)
  from sagan_jax import evaluation  # loads TensorFlow (see evaluate)
  try:
    extractor = evaluation.make_extractor(config, make_mesh(), options.features,
                                          options.inception_weights, options.classifier_weights)
  except FileNotFoundError as e:
    raise ModeError(str(e)) from None
  directory = evaluation.reference_dir(config, workdir)
  try:
    evaluation.references(config, extractor, options.eval_samples, directory,
                          options.intra_class)
  except ValueError as e:
    raise ModeError(f'--intra_class={options.intra_class!r}: {e}') from None
  return [directory]  # each file is logged as it is read or written (by process 0)


RUN = {'sample': sample, 'interpolate': interpolate, 'attention': attention, 'eval': evaluate}
