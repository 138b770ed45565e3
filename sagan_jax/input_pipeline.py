"""TFDS -> tf.data -> numpy uint8 batches for the train step.

Images stay uint8 on the host; the train step scales them to [-1, 1] on the
device. Each batch holds one real batch per D step:
{'image': uint8 [num_d_steps, B, S, S, 3], 'label': int32 [num_d_steps, B]}.
Datasets without labels (CelebA, LSUN) train unconditionally: every label is 0.

config.dataset is a TFDS name (decoded and resized while training),
'resized:NAME' (the copy of NAME that `python -m sagan_jax.prepare` wrote at
config.image_size), or 'folder:ROOT' (ROOT/<class>/<image>, prepared into the
TFDS data dir on first use).
"""
import os

os.environ.setdefault('NO_GCE_CHECK', 'true')  # no GCE metadata probe when offline

import jax
import tensorflow as tf
from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from sagan_jax import resized_dataset
from sagan_jax.preprocessing import preprocess
from sagan_jax import shapes_dataset  # registers the embedded TFDS builder

try:  # TensorFlow only reads data: the accelerators are JAX's
  tf.config.experimental.set_visible_devices([], 'GPU')
except RuntimeError:  # TF was initialised already by the importer, who chose
  pass

EMBEDDED = shapes_dataset.SaganShapes.name  # 'sagan_shapes'
MANUAL_FILES = {'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'}


class DataError(ValueError):
  """A dataset that cannot be read; the message says what is missing and the fix."""


def _data_dir(config) -> str:
  return config.data_dir or os.path.expanduser('~/tensorflow_datasets')


def _how_to_prepare(config) -> str:
  name, data_dir = config.dataset, _data_dir(config)
  if name.split('/')[0] in MANUAL_FILES:
    return (f'put {MANUAL_FILES[name]} in {data_dir}/downloads/manual/ and run once: '
            f'tfds build {name} --data_dir={data_dir}')
  return f'run once, on a machine with network access: tfds build {name} --data_dir={data_dir}'


RESIZED = 'resized:'


def _builder(config) -> tfds.core.DatasetBuilder:
  name, data_dir = config.dataset, _data_dir(config)
  if name.startswith(resized_dataset.FOLDER):
    root = name[len(resized_dataset.FOLDER):]
    if not epath.Path(root).is_dir() or not resized_dataset.folder_classes(root):
      raise DataError(f'config.dataset={name!r}: {root} must be a folder of class folders, '
                      'ROOT/<class>/<image>')
    builder = resized_dataset.builder(name, config.image_size, data_dir)
    _prepare(builder, f'the image folder {root}')  # local files only
    return builder
  if name.startswith(RESIZED):
    builder = resized_dataset.builder(name[len(RESIZED):], config.image_size, data_dir)
    if not builder.is_prepared():
      raise DataError(f'no {config.image_size}px copy of {name[len(RESIZED):]} in {data_dir}: '
                      f'run once: python -m sagan_jax.prepare --dataset={name[len(RESIZED):]} '
                      f'--image_size={config.image_size} --data_dir={data_dir}')
    return builder
  builder = tfds.builder(name, data_dir=config.data_dir or None, try_gcs=False)
  if name == EMBEDDED:
    _prepare(builder, f'{name} (about 5 s)',
             download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _prepare(builder: tfds.core.DatasetBuilder, what: str, **kwargs) -> None:
  """Prepares a dataset once. Processes of one run that share the data dir may prepare
  it at the same time: each writes its own temporary copy, and every rename after the
  first finds the dataset there, which is as good."""
  if not builder.is_prepared():
    logging.info('Preparing %s in %s (once).', what, builder.data_dir)
  try:
    builder.download_and_prepare(**kwargs)  # nothing to do once prepared
  except FileExistsError:
    if not builder.is_prepared():
      raise


def get_builder(config) -> tfds.core.DatasetBuilder:
  """The dataset's builder, with the embedded dataset and image folders prepared."""
  try:
    builder = _builder(config)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'config.dataset={config.dataset!r} is not a TFDS dataset; use a name from '
                    f'tfds.list_builders(), e.g. cifar10, imagenet2012, celeb_a, lsun/bedroom, '
                    f'or {EMBEDDED!r}, or folder:ROOT for a folder of images') from None
  features = builder.info.features
  classes = features['label'].num_classes if 'label' in features else 1
  if classes != config.num_classes:
    raise DataError(f'config.num_classes={config.num_classes} but {config.dataset} has '
                    f'{classes} class{"es" if classes > 1 else ""}: set --config.num_classes='
                    f'{classes}')
  return builder


def process_split(split: str) -> str:
  """This process's disjoint part of `split` (all of it in a single-process run)."""
  return tfds.split_for_jax_process(split) if jax.process_count() > 1 else split


class TrainIterator:
  """Endless numpy batches whose position can be saved and restored exactly."""

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __iter__(self):
    return self

  def __next__(self):
    return jax.tree.map(lambda t: t.numpy(), next(self._iterator))

  def save(self, path: str) -> str | None:
    """Writes the position (with the shuffle buffer) under the prefix `path`.
    None if tf.data cannot serialise this pipeline (one with Python functions
    in it, e.g. under tfds.testing.mock_data)."""
    try:
      return self._checkpoint.write(path)
    except tf.errors.FailedPreconditionError as e:
      logging.warning('The data position cannot be saved (%s); a resumed run restarts the '
                      'data stream.', e.message.strip().splitlines()[-1])
      return None

  def restore(self, path: str) -> None:
    self._checkpoint.read(path).assert_consumed()


def create_train_iterator(config, split: str = 'train') -> TrainIterator:
  """This process's part of every global batch, in a fixed order for config.seed."""
  builder = get_builder(config)
  per_process = config.batch_size // jax.process_count()
  try:
    ds = builder.as_dataset(split=process_split(split), shuffle_files=True,
                            read_config=tfds.ReadConfig(shuffle_seed=config.seed))
  except AssertionError:  # tfds: "could not find data in DATA_DIR"
    raise DataError(f'{config.dataset} is not prepared in {_data_dir(config)}: '
                    f'{_how_to_prepare(config)}') from None
  ds = ds.map(lambda ex: preprocess(ex, config.image_size), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.repeat().shuffle(config.shuffle_buffer, seed=config.seed)
  if config.random_flip:  # stateless: the same flips for the same seed and position
    ds = ds.enumerate().map(lambda i, ex: dict(ex, image=tf.image.stateless_random_flip_left_right(
        ex['image'], tf.stack([tf.cast(config.seed, tf.int64), i]))))
  ds = ds.batch(per_process, drop_remainder=True).batch(config.num_d_steps)
  return TrainIterator(ds.prefetch(tf.data.AUTOTUNE))
