"""The embedded TFDS dataset and the input pipeline."""
import numpy as np
import tensorflow as tf

from tiny_config import tiny_config
from sagan_jax import input_pipeline, shapes_dataset


def test_embedded_dataset_prepares_offline_and_is_balanced(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir)
  builder = input_pipeline.get_builder(config)
  info = builder.info
  assert info.features['label'].names == list(shapes_dataset.CLASS_NAMES)
  assert info.splits['train'].num_examples == 10_000
  assert info.splits['test'].num_examples == 1_000
  labels = np.array([int(ex['label']) for ex in builder.as_dataset(split='test').take(1000)])
  assert np.all(np.bincount(labels, minlength=10) == 100)


def test_train_batches_have_one_real_batch_per_d_step(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10)
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch['image'].shape == (2, 8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (2, 8) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < 10
  assert batch['image'].max() > 200 and batch['image'].min() < 60  # bright shapes, dark ground
  assert not np.array_equal(batch['image'][0], batch['image'][1])
  again = next(input_pipeline.create_train_iterator(config))  # same seed, same order
  np.testing.assert_array_equal(batch['image'], again['image'])


def test_classes_differ_in_structure_not_colour():
  for seed in range(20):
    # The same seed draws the same position, size and period for every class.
    masks = [shapes_dataset._mask(label, np.random.default_rng(seed)) for label in range(10)]
    for a in range(10):
      for b in range(a + 1, 10):
        assert np.mean(masks[a] != masks[b]) > 0.02  # a disc and a square: the corners, (seed, a, b)
  # Same seed, same examples.
  first = [im for im, _ in shapes_dataset.generate(20, seed=3)]
  second = [im for im, _ in shapes_dataset.generate(20, seed=3)]
  np.testing.assert_array_equal(first, second)


def test_preprocess_centre_crops_and_resizes():
  image = np.zeros((40, 60, 3), np.uint8)
  image[:, 10:50] = 255  # the centred 40x40 square is white, the side bands black
  out = input_pipeline.preprocess({'image': tf.constant(image), 'label': tf.constant(3)}, 32)
  assert out['image'].shape == (32, 32, 3) and out['image'].dtype == tf.uint8
  assert int(tf.reduce_min(out['image'])) == 255
  gray = input_pipeline.preprocess({'image': tf.zeros((32, 32, 1), tf.uint8),
                                    'label': tf.constant(1, tf.int64)}, 32)
  assert gray['image'].shape == (32, 32, 3) and gray['label'].dtype == tf.int32
