"""`sagan_resized`: a TFDS dataset of images already cropped and resized for training.

Two sources, one builder config each:
- `folder:ROOT`, images laid out as ROOT/<class>/<image> (one class folder:
  unconditional). PIL decodes every file to RGB (grayscale, RGBA, CMYK);
  unreadable or truncated files are skipped and counted in the log.
- a TFDS dataset name (e.g. imagenet2012), prepared already: decoding full-size
  JPEGs is the bottleneck of GAN training on fast chips, so `python -m
  sagan_jax.prepare` writes this copy once and training reads it.
Images are decoded, centre-cropped and resized (preprocessing.py) by a pool of
processes, one per core, and stored as raw uint8 pixels in ArrayRecord files,
which training reads by index without decoding anything. A source prepared in
TFDS's TFRecord format is read with tf.data (TensorFlow is needed here only): this
is also the way to convert one.
"""
import hashlib
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from sagan_jax.preprocessing import decode_image, preprocess, preprocess_image

FOLDER = 'folder:'


class ResizedConfig(tfds.core.BuilderConfig):
  """Which source, at which size."""

  def __init__(self, *, source: str, image_size: int):
    if source.startswith(FOLDER):
      root = source[len(FOLDER):]
      root = root if '://' in root else os.path.abspath(os.path.expanduser(root))  # or gs://
      source = FOLDER + root
      digest = hashlib.sha1(root.encode()).hexdigest()[:8]
      slug = f'folder_{epath.Path(root).name or "root"}_{digest}'
    else:
      slug = source.replace('/', '_')
    super().__init__(name=f'{slug}_{image_size}'.lower().replace('-', '_'),
                     description=f'{source} at {image_size}x{image_size}')
    self.source, self.image_size = source, image_size


def folder_classes(root: str) -> list[str]:
  return sorted(d.name for d in epath.Path(root).iterdir() if d.is_dir())


def load_image(path: str, image_size: int) -> np.ndarray:
  """uint8 [S, S, 3]: decoded to RGB, centre-cropped, resized. Raises on a bad file."""
  return preprocess_image(decode_image(epath.Path(path).read_bytes()), image_size)


def _folder_image(args):
  """(path, size) -> (path, image or None, why): for the pool, never raises."""
  path, size = args
  try:
    return path, load_image(path, size), ''
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
    return path, None, type(e).__name__


def _preprocess(args):
  """(example, size) -> preprocessing.preprocess(example, size), for the pool."""
  return preprocess(*args)


def _pool():
  """One process per core (spawned: the parent may hold threads of TF or JAX)."""
  return multiprocessing.get_context('spawn').Pool(os.cpu_count())


class SaganResized(tfds.core.GeneratorBasedBuilder):
  """Builds with `builder(source, image_size, data_dir)` below."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '2.0.0': 'ArrayRecord files of raw pixels, read by index; one image '
                            'preprocessing (PIL).'}

  def _source_classes(self) -> list[str]:
    source = self.builder_config.source
    if source.startswith(FOLDER):
      return folder_classes(source[len(FOLDER):])
    features = tfds.builder(source, data_dir=self.data_dir_root, try_gcs=False).info.features
    return list(features['label'].names) if 'label' in features else ['all']

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw pixels, not PNG: nothing to decode while training (decoding a PNG costs
            # more than the rest of the input together), for a few times the bytes of a
            # PNG of photo-like images. As bytes: the default, a list of integers, takes
            # longer to parse than the PNG to decode.
            'image': tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=self._source_classes()),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # reads local data only
    source = self.builder_config.source
    if source.startswith(FOLDER):
      return {'train': self._generate_examples('train')}
    splits = tfds.builder(source, data_dir=self.data_dir_root, try_gcs=False).info.splits
    return {name: self._generate_examples(name) for name in splits}

  def _generate_examples(self, split):
    source = self.builder_config.source
    if source.startswith(FOLDER):
      return self._folder_examples(source[len(FOLDER):])
    return self._tfds_examples(source, split)

  def _folder_examples(self, root):
    size = self.builder_config.image_size
    files = [(f'{name}/{file}', label, os.fspath(epath.Path(root) / name / file))
             for label, name in enumerate(folder_classes(root))
             for file in sorted(p.name for p in (epath.Path(root) / name).iterdir())]
    skipped = []
    with _pool() as pool:  # imap keeps the order of `files`
      results = pool.imap(_folder_image, [(path, size) for _, _, path in files], 16)
      for (key, label, _), (path, image, why) in zip(files, results):
        if image is None:
          skipped.append(f'{path} ({why})')
          continue
        yield key, {'image': image, 'label': label}  # keys: the same order anywhere
    if skipped:
      logging.warning('Skipped %d unreadable files of %d in %s: %s', len(skipped), len(files),
                      root, '; '.join(skipped[:10]))

  def _tfds_examples(self, source, split):
    size = self.builder_config.image_size
    examples = ((example, size) for example in _read(source, split, self.data_dir_root))
    with _pool() as pool:
      yield from enumerate(pool.imap(_preprocess, examples, 16))


def _read(source: str, split: str, data_dir: str):
  """The examples of a prepared TFDS dataset, their images encoded, in order: from
  ArrayRecord files by index, or from TFRecord files through tf.data."""
  builder = tfds.builder(source, data_dir=data_dir, try_gcs=False)
  decoders = encoded_images(builder)
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    examples = builder.as_data_source(split=split, decoders=decoders)
    yield from (examples[i] for i in range(len(examples)))
  else:
    yield from tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders))


def encoded_images(builder: tfds.core.DatasetBuilder) -> dict:
  """TFDS decoders that keep encoded images (JPEG, PNG) as bytes, for the callers to
  decode where they run in parallel (preprocessing.preprocess); raw pixels as arrays."""
  if isinstance(builder.info.features['image'], tfds.features.Image):
    return {'image': tfds.decode.SkipDecoding()}
  return {}


def builder(source: str, image_size: int, data_dir: str) -> SaganResized:
  return SaganResized(config=ResizedConfig(source=source, image_size=image_size),
                      data_dir=data_dir, file_format=tfds.core.FileFormat.ARRAY_RECORD)
