"""`sagan_resized`: a TFDS dataset of images already cropped and resized for training.

Two sources, one builder config each:
- `folder:ROOT`, images laid out as ROOT/<class>/<image> (one class folder:
  unconditional). PIL decodes every file to RGB (grayscale, RGBA, CMYK);
  unreadable or truncated files are skipped and counted in the log.
- a TFDS dataset name (e.g. imagenet2012), prepared already: decoding full-size
  JPEGs is the bottleneck of GAN training on fast chips, so `python -m
  sagan_jax.prepare` writes this copy once and training reads it.
Images are centre-cropped to a square and resized with anti-aliasing (PIL's
Lanczos filter for folders, TF's anti-aliased bilinear resize for TFDS sources),
stored as PNG.
"""
import hashlib
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from sagan_jax.preprocessing import preprocess

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
  with epath.Path(path).open('rb') as f, Image.open(f) as image:
    image.load()  # decode everything now: a truncated file fails here
    image = image.convert('RGB')
  side = min(image.size)
  left, top = (image.width - side) // 2, (image.height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  if side != image_size:
    image = image.resize((image_size, image_size), Image.LANCZOS)
  return np.asarray(image, np.uint8)


class SaganResized(tfds.core.GeneratorBasedBuilder):
  """Builds with `builder(source, image_size, data_dir)` below."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

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
            'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
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
    size, skipped, total = self.builder_config.image_size, [], 0
    for label, name in enumerate(folder_classes(root)):
      for file in sorted(p.name for p in (epath.Path(root) / name).iterdir()):
        path = os.fspath(epath.Path(root) / name / file)
        total += 1
        try:
          image = load_image(path, size)
        except Exception as e:  # PIL raises many types for bad files
          skipped.append(f'{path} ({type(e).__name__})')
          continue
        yield f'{name}/{file}', {'image': image, 'label': label}  # keys: same order anywhere
    if skipped:
      logging.warning('Skipped %d unreadable files of %d in %s: %s', len(skipped), total, root,
                      '; '.join(skipped[:10]))

  def _tfds_examples(self, source, split):
    size = self.builder_config.image_size
    ds = tfds.builder(source, data_dir=self.data_dir_root, try_gcs=False).as_dataset(split=split)
    ds = ds.map(lambda ex: preprocess(ex, size), num_parallel_calls=tf.data.AUTOTUNE)
    for i, example in enumerate(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))):
      yield i, {'image': example['image'], 'label': int(example['label'])}


def builder(source: str, image_size: int, data_dir: str) -> SaganResized:
  return SaganResized(config=ResizedConfig(source=source, image_size=image_size),
                      data_dir=data_dir)
