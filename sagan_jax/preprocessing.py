"""The one image preprocessing of every TFDS source (training, evaluation's real images,
the pre-resized copy), in TensorFlow: a leaf module."""
import tensorflow as tf


def preprocess(example, image_size: int):
  """Centre crop to a square, resize with anti-aliasing, RGB uint8; label 0 if none."""
  image = example['image']
  image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image[..., :3]
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(h, w)
  image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  label = tf.cast(example['label'], tf.int32) if 'label' in example else tf.constant(0, tf.int32)
  return {'image': image, 'label': label}
