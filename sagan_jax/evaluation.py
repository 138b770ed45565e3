"""Sample quality of a generator: FID, Inception Score and KID from Inception-v3
(`--features=inception --inception_weights=FILE`), or, for the embedded
dataset, class accuracy and a Frechet distance from a small classifier trained
on it (`--features=classifier`). Generation and feature extraction run on all
devices; the statistics are computed on the host in float64 (metrics.py).

Scoring samples (Extractor, generate, score, evaluate) needs no TensorFlow or TFDS
(benchmarks/accelerator_check.py runs it without them); only reading a dataset's
reference images does, so input_pipeline is imported where that happens.
"""
import concurrent.futures
import os
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import classifier, inception, logs, metrics, sampling, shapes_dataset
from sagan_jax.config import ConfigError, class_indices
from sagan_jax.mesh import global_array
from sagan_jax.preprocessing import preprocess

KID_FEATURES = 10_000  # features kept in a reference file for KID
BATCH = 256  # images per batch generated and scored (rounded up to a multiple of the devices)


class Extractor:
  """uint8 images [n, S, S, 3] -> (features [n, d], logits [n, k]), in batches
  split over the mesh's devices."""

  def __init__(self, kind: str, weights: str, mesh, num_classes: int):
    self.kind, self.mesh = kind, mesh
    if kind == 'classifier':
      params = classifier.load(weights)
    elif kind == 'inception':
      if not weights or not epath.Path(weights).exists():
        raise FileNotFoundError(
            f'no Inception weights at {weights!r}: convert pytorch-fid\'s file once with '
            'python -m sagan_jax.convert_inception and pass --inception_weights=FILE')
      params = inception.load_params(weights)
    else:
      raise ValueError(f"features={kind!r}: 'inception' or 'classifier'")
    self._split = NamedSharding(mesh, P('data'))
    self.params = jax.tree.map(lambda a: global_array(np.asarray(a), NamedSharding(mesh, P())),
                               params)
    self._apply = feature_program(kind, mesh, num_classes)

  def __call__(self, images: np.ndarray, batch_size: int = BATCH):
    # Fewer images than a batch: a smaller batch (compiled once more), not padding.
    batch_size = max(min(batch_size, len(images)), 1)
    batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
    features, logits = [], []
    for start in range(0, len(images), batch_size):
      x = images[start:start + batch_size]
      n = len(x)
      x = np.pad(x, [(0, batch_size - n), (0, 0), (0, 0), (0, 0)])
      f, l = self._apply(self.params, global_array(x, self._split))
      features.append(np.asarray(f)[:n])
      logits.append(np.asarray(l)[:n])
    return np.concatenate(features), np.concatenate(logits)


def feature_program(kind: str, mesh, num_classes: int):
  """(params, uint8 images [n, S, S, 3] split over `mesh`) -> (features, logits), under jit:
  Inception-v3's pool features or the shipped classifier's."""
  if kind == 'classifier':
    model = classifier.Classifier(num_classes)
    apply = lambda p, x: model.apply({'params': p}, x)
  else:
    apply = lambda p, x: inception.InceptionV3().apply({'params': p}, inception.preprocess(x))
  return jax.jit(apply, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))),
                 out_shardings=NamedSharding(mesh, P()))


def feature_param_shapes(kind: str, num_classes: int, image_size: int):
  """The params of feature_program(kind) as ShapeDtypeStructs (nothing computed)."""
  if kind == 'inception':
    return inception.param_shapes()
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
  return jax.eval_shape(lambda x: classifier.Classifier(num_classes).init(
      jax.random.PRNGKey(0), x), images)['params']


def feature_kind(config, kind: str = '') -> str:
  """`kind`, else config.eval_features, else the classifier for an embedded dataset and
  Inception otherwise."""
  return kind or config.eval_features or (
      'classifier' if config.dataset in classifier.EMBEDDED else 'inception')


def make_extractor(config, mesh, kind: str = '', inception_weights: str = '',
                   classifier_weights: str = '') -> Extractor:
  """The extractor for `config`'s dataset: `kind` or config.eval_features, else the
  classifier for the embedded dataset and Inception otherwise."""
  kind = feature_kind(config, kind)
  if kind == 'inception':
    weights = inception_weights or config.inception_weights
  else:
    weights = classifier_weights or config.classifier_weights
    if not weights and config.dataset not in classifier.EMBEDDED:
      raise FileNotFoundError(
          f'no classifier ships for {config.dataset!r} (only for {tuple(classifier.EMBEDDED)}):'
          ' pass --classifier_weights=FILE, or use the Inception features')
    weights = weights or classifier.shipped(config.dataset)
  return Extractor(kind, weights, mesh, config.num_classes)


def reference_dir(config, workdir: str) -> str:
  return config.get('reference_dir') or os.fspath(epath.Path(workdir) / 'reference_stats')


def dataset_batches(config, split: str, num: int = 0, classes=None, batch_size: int = 1000):
  """(uint8 images, int32 labels) batches of the split, preprocessed as for
  training: its first `num` examples (0: all), or only those of `classes`
  (chosen by label before any image is decoded)."""
  from sagan_jax import input_pipeline  # TFDS: see the module's docstring
  source = input_pipeline.data_source(config, split)
  indices = range(len(source))
  if classes is not None:
    wanted = set(int(c) for c in classes)
    indices = [i for i in indices if int(source[i].get('label', 0)) in wanted]
  indices = indices[:num] if num else indices
  decode = lambda i: preprocess(source[i], config.image_size)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL releases the GIL
    for start in range(0, len(indices), batch_size):
      examples = list(pool.map(decode, indices[start:start + batch_size]))
      yield (np.stack([ex['image'] for ex in examples]),
             np.array([ex['label'] for ex in examples], np.int32))


def dataset_images(config, split: str, num: int) -> np.ndarray:
  """Up to `num` images of the dataset's split, preprocessed as for training."""
  return np.concatenate([images for images, _ in dataset_batches(config, split, num)])


def _cached(config, extractor: Extractor, name: str, cache_dir: str, compute,
            keys=()) -> dict:
  """compute() -> dict of arrays, kept in cache_dir/DATASET_SIZE_FEATURES_NAME.npz
  (computed again if a cached file lacks one of `keys`: an older version's)."""
  dataset = config.dataset.replace('/', '_').replace(':', '_').replace(os.sep, '_')
  path = epath.Path(cache_dir) / f'{dataset}_{config.image_size}_{extractor.kind}_{name}.npz'
  if path.exists():
    with path.open('rb') as f, np.load(f, allow_pickle=False) as arrays:
      if all(k in arrays for k in keys):
        logging.info('Reference statistics of %s (cached): %s', config.dataset, path)
        return dict(arrays)
  stats = compute()
  if jax.process_index() == 0:  # every process computes them; one writes
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: another run reading the cache (or one killed while
    # writing) never sees part of a file.
    tmp = path.parent / f'{path.name}.tmp{os.getpid()}'
    with tmp.open('wb') as f:
      np.savez(f, **stats)
    tmp.replace(path)
  logging.info('Reference statistics of %s: %s', config.dataset, path)
  return stats


def _extract(extractor: Extractor, batches, what: str, total: int | None = None,
             with_colours: bool = False):
  """Features and labels of all (images, labels) batches, with a progress line;
  with_colours: also their shapes_dataset.colours() (the embedded dataset's)."""
  features, labels, colour, progress = [], [], [], logs.Progress(what, total, 'images')
  for i, (x, y) in enumerate(batches):
    features.append(extractor(x)[0])
    labels.append(y)
    if with_colours:
      colour.append(shapes_dataset.colours(x))
    if (i + 1) % 10 == 0:
      logging.info(progress.line(sum(map(len, labels))))
  out = np.concatenate(features), np.concatenate(labels)
  if with_colours:
    out += tuple(np.concatenate(c) for c in zip(*colour))
  return out


def statistics(features: np.ndarray, labels: np.ndarray) -> dict:
  """What score() compares with, of real images' features and labels: mu, sigma, the
  within-class diversity, and (up to KID_FEATURES) the features and labels."""
  mu, sigma = metrics.moments(features)
  return {'mu': mu, 'sigma': sigma, 'features': features[:KID_FEATURES],
          'labels': labels[:KID_FEATURES],
          'diversity': metrics.within_class_diversity(features, labels)}


def reference_statistics(config, extractor: Extractor, split: str, num: int,
                         cache_dir: str) -> dict:
  """mu, sigma, the within-class diversity (of the features, and for the
  embedded shapes of the colours) and (up to KID_FEATURES) features and labels of
  the split's first `num` images, computed once and cached in cache_dir."""
  embedded = config.dataset == 'sagan_shapes'  # the colours are the shapes' own

  def compute():
    features, labels, *colour = _extract(extractor, dataset_batches(config, split, num),
                                         'reference', num, with_colours=embedded)
    stats = statistics(features, labels)
    if embedded:
      c, both = colour
      stats['colour_diversity'] = metrics.within_class_diversity(c[both], labels[both])
    return stats
  return _cached(config, extractor, f'{split}_{num}', cache_dir, compute,
                 keys=('diversity', 'labels') + (('colour_diversity',) if embedded else ()))


def class_reference(config, extractor: Extractor, split: str, classes: list[int],
                    cache_dir: str) -> dict:
  """Features and labels of every image of `classes` in the split, for
  intra-class FID; cached. The features, not per-class covariances: at
  ImageNet's ~1,300 images per class they are the smaller of the two
  (float32, 10 MB per class) and give the distance directly."""
  classes = sorted(set(classes))
  tag = 'all' if classes == list(range(config.num_classes)) else \
      '_'.join(map(str, classes)) if len(classes) <= 8 else \
      f'{len(classes)}_{zlib.crc32(str(classes).encode()):08x}'
  def compute():
    features, labels = _extract(extractor, dataset_batches(config, split, classes=classes),
                                'class reference')
    counts = np.bincount(labels, minlength=config.num_classes)
    few = [c for c in classes if counts[c] < 2]
    if few:
      raise ValueError(f'class {few[0]} has {counts[few[0]]} image(s) in the {split} split; '
                       'intra-class FID needs at least 2 per class: leave it out')
    return {'features': features, 'labels': labels.astype(np.int32)}
  return _cached(config, extractor, f'{split}_classes_{tag}', cache_dir, compute)


def references(config, extractor: Extractor, num: int, cache_dir: str, intra_class: str = ''):
  """What evaluate() compares with: (reference_statistics of `num` train images,
  the class_reference of the `intra_class` classes ('3,5,7' or 'all') or None,
  those classes). ValueError saying what is wrong with `intra_class`."""
  classes = class_indices(intra_class, config.num_classes) if intra_class else []
  reference = reference_statistics(config, extractor, 'train', num, cache_dir)
  class_ref = class_reference(config, extractor, 'train', classes, cache_dir) if classes else None
  return reference, class_ref, classes


def intra_class_distances(features, labels, reference: dict, classes) -> dict[int, float]:
  """The Frechet distance of each class's generated and real features."""
  return {int(c): metrics.frechet_distance_of_features(
      features[labels == c], reference['features'][reference['labels'] == c]) for c in classes}


def colour_diversity(images: np.ndarray, labels: np.ndarray) -> float:
  """Within-class diversity of the (foreground, background) colours of images
  that have both (the embedded dataset draws both at random in every class)."""
  c, both = shapes_dataset.colours(images)
  return metrics.within_class_diversity(c[both], labels[both])


def floor(config, extractor: Extractor, reference: dict, num: int, cache_dir: str) -> dict:
  """score() of `num` real images that are not in the reference: what a perfect
  generator would get at this sample count (FID is biased upwards at small
  n). The embedded shapes generate new ones (from a seed their splits do not
  use); other datasets use their test or validation split, up to `num` ({} if
  they have neither). Cached; 'num_samples' says how many were scored."""
  if config.dataset == 'sagan_shapes':
    real = lambda: map(np.stack, zip(*shapes_dataset.generate(num, seed=2)))
  else:
    from sagan_jax import input_pipeline  # TFDS: see the module's docstring
    available = input_pipeline.get_builder(config).info.splits
    splits = [s for s in ('test', 'validation') if s in available]
    if not splits:
      return {}
    real = lambda: map(np.concatenate, zip(*dataset_batches(config, splits[0], num)))

  def compute():
    images, labels = real()
    return {'num_samples': len(images),
            **score(images, labels.astype(np.int32), extractor, reference)}
  cached = _cached(config, extractor, f'floor_{num}', cache_dir,
                   lambda: {k: np.asarray(v) for k, v in compute().items()}, keys=('recall',))
  return {k: float(v) for k, v in cached.items()}


def generate(images: sampling.ImageSampler, variables, config, num: int, batch_size: int,
             seed: int):
  """num samples (uint8) with classes in turn, and their labels; every batch has
  the same shape (the last one padded), so G is compiled once."""
  batch_size = -(-batch_size // images.mesh.size) * images.mesh.size
  key = jax.random.PRNGKey(seed)
  progress = logs.Progress('generated', num, 'images')
  out, labels = [], np.arange(num, dtype=np.int32) % config.num_classes
  for i, start in enumerate(range(0, num, batch_size)):
    y = np.resize(labels[start:start + batch_size], batch_size)
    z = jax.random.normal(jax.random.fold_in(key, i), (batch_size, config.z_dim))
    out.append(images(variables, z, y)[:num - start])
    if (i + 1) % 10 == 0 or start + batch_size >= num:
      logging.info(progress.line(min(start + batch_size, num)))
  return np.concatenate(out), labels


def score(images: np.ndarray, labels: np.ndarray, extractor: Extractor, reference: dict,
          batch_size: int = BATCH, class_ref: dict | None = None, classes=()) -> dict:
  """The metrics of uint8 `images` of classes `labels` against `reference`:
  FID, IS, KID (with the classifier: a Frechet distance, a classifier score, a
  kernel distance, and the class accuracy); the within-class diversity of the
  features and its ratio to the reference's (for the embedded dataset also
  of the colours); with `class_ref` (class_reference) the
  intra-class FID of `classes`: their mean, and each class's in a dict."""
  features, logits = extractor(images, batch_size)
  # With the classifier these are not FID/IS/KID (not Inception's features): other names.
  fid, is_, kid = (('fid', 'is', 'kid') if extractor.kind == 'inception' else
                   ('frechet_distance', 'classifier_score', 'kernel_distance'))
  result = {fid: metrics.frechet_distance_to(features, reference['mu'], reference['sigma'])}
  result[is_], result[is_ + '_std'] = metrics.inception_score(logits)
  result[kid], result[kid + '_std'] = metrics.kernel_inception_distance(
      features, reference['features'], subsets=10, subset_size=min(1000, len(images)))
  # Fidelity and variety (k = 3 and 5) against the reference's features, and class by
  # class where the reference has each class's labels.
  # The reference's k-NN radii are kept in it for its next score (every evaluation).
  kept = reference.setdefault('knn_radii', {'per_class': {}})
  if 'all' not in kept:
    kept['all'] = metrics.knn_radii(np.asarray(reference['features'], np.float64),
                                   (metrics.K_PR, metrics.K_DC))
  result.update(metrics.precision_recall_density_coverage(
      reference['features'], features[:KID_FEATURES], real_radii=kept['all']))
  if 'labels' in reference:
    result.update({f'{k}_per_class': v for k, v in metrics.per_class_precision_recall(
        reference['features'], reference['labels'], features, labels,
        kept['per_class']).items()})
  result['diversity'] = metrics.within_class_diversity(features, labels)
  result['diversity_vs_data'] = result['diversity'] / float(reference['diversity'])
  if 'colour_diversity' in reference:  # the embedded dataset
    result['colour_diversity'] = colour_diversity(images, labels)
    result['colour_diversity_vs_data'] = (result['colour_diversity'] /
                                          float(reference['colour_diversity']))
  if class_ref is not None:
    per_class = intra_class_distances(features, labels, class_ref, classes)
    result['intra_' + fid] = float(np.mean(list(per_class.values())))
    result['intra_' + fid + '_classes'] = per_class
  if extractor.kind == 'classifier':
    result['class_accuracy'] = float((logits.argmax(-1) == labels).mean())
  return result


def evaluate(images: sampling.ImageSampler, variables, config, extractor: Extractor,
             reference: dict, num: int, batch_size: int = BATCH, seed: int = 0,
             class_ref: dict | None = None, classes=()) -> dict:
  """score() of `num` samples of G (`images` with `variables`), classes in
  turn, with the time taken."""
  start = time.time()
  samples, labels = generate(images, variables, config, num, batch_size, seed)
  generated = time.time()
  result = {'num_samples': num, **score(samples, labels, extractor, reference, batch_size,
                                        class_ref, classes)}
  scored = time.time()
  result.update(generate_images_per_s=num / (generated - start),
                score_images_per_s=num / (scored - generated), seconds=scored - start)
  return result


class Evaluator:
  """In-training evaluation of the raw and EMA G; set up, with the reference
  statistics and the floor, before anything is compiled for training."""

  def __init__(self, config, mesh, workdir, image_sampler):
    self.config = config
    self.images = image_sampler
    try:
      self.extractor = make_extractor(config, mesh)
    except FileNotFoundError as e:
      raise ConfigError(f'config.eval_every_steps={config.eval_every_steps} needs {e}') from None
    cache_dir = reference_dir(config, workdir)
    try:
      self.reference, self.class_ref, self.classes = references(
          config, self.extractor, config.eval_num_samples, cache_dir, config.eval_intra_class)
    except ValueError as e:
      raise ConfigError(f'config.eval_intra_class={config.eval_intra_class!r}: {e}') from None
    self.distance = 'fid' if self.extractor.kind == 'inception' else 'frechet_distance'
    self.floor = floor(config, self.extractor, self.reference, config.eval_num_samples,
                       cache_dir)
    logging.info('Evaluation floor (%d real images outside the reference, scored alike) | %s',
                 self.floor.pop('num_samples', 0), logs.format_metrics(self.floor))

  def __call__(self, generators: dict) -> dict:
    """{'ema': variables, 'raw': variables} -> {'eval/ema/fid': ..., 'eval/raw/fid': ...}."""
    out = {}
    for name, variables in generators.items():
      result = evaluate(self.images, variables, self.config, self.extractor, self.reference,
                        self.config.eval_num_samples, seed=self.config.seed,
                        class_ref=self.class_ref, classes=self.classes)
      # Scalars only: each class's intra-class FID is in --mode=eval's JSON.
      out.update({f'eval/{name}/{k}': v for k, v in result.items()
                  if k != 'num_samples' and not isinstance(v, dict)})
    return out
