"""TFDS -> tf.data -> numpy uint8 batches for the train step.

Images stay uint8 on the host; the train step scales them to [-1, 1] on the
device. Each batch holds one real batch per D step:
{'image': uint8 [num_d_steps, B, S, S, 3], 'label': int32 [num_d_steps, B]}.
"""
import os

os.environ.setdefault('NO_GCE_CHECK', 'true')  # no GCE metadata probe when offline

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from sagan_jax import shapes_dataset  # registers the embedded TFDS builder

EMBEDDED = shapes_dataset.SaganShapes.name  # 'sagan_shapes'


def get_builder(config) -> tfds.core.DatasetBuilder:
  """The dataset's builder; prepares the embedded dataset locally if needed."""
  builder = tfds.builder(config.dataset, data_dir=config.data_dir or None, try_gcs=False)
  if config.dataset == EMBEDDED:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def preprocess(example, image_size: int):
  """Centre crop to a square, resize with anti-aliasing, RGB uint8."""
  image = example['image']
  image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image[..., :3]
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(h, w)
  image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return {'image': image, 'label': tf.cast(example['label'], tf.int32)}


def create_train_iterator(config, split: str = 'train'):
  """An endless iterator of this process's part of each global batch."""
  builder = get_builder(config)
  per_process = config.batch_size // jax.process_count()
  if jax.process_count() > 1:
    split = tfds.split_for_jax_process(split)  # a disjoint part for each process
  ds = builder.as_dataset(split=split, shuffle_files=True,
                          read_config=tfds.ReadConfig(shuffle_seed=config.seed))
  ds = ds.map(lambda ex: preprocess(ex, config.image_size), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.repeat().shuffle(config.shuffle_buffer, seed=config.seed)
  ds = ds.batch(per_process, drop_remainder=True).batch(config.num_d_steps)
  return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))
