"""The embedded TFDS dataset and the input pipeline."""
import logging
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from sagan_jax import input_pipeline, shapes_dataset, train
from sagan_jax.preprocessing import preprocess
from processes import run_workers
from tiny_config import load_config, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_embedded_dataset_prepares_offline_and_is_balanced(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10)
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
  out = preprocess({'image': tf.constant(image), 'label': tf.constant(3)}, 32)
  assert out['image'].shape == (32, 32, 3) and out['image'].dtype == tf.uint8
  assert int(tf.reduce_min(out['image'])) == 255
  gray = preprocess({'image': tf.zeros((32, 32, 1), tf.uint8),
                                    'label': tf.constant(1, tf.int64)}, 32)
  assert gray['image'].shape == (32, 32, 3) and gray['label'].dtype == tf.int32


def test_data_position_saves_and_restores_exactly(tfds_dir, tmp_path):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10)
  data = input_pipeline.create_train_iterator(config)
  for _ in range(3):
    next(data)
  prefix = data.save(str(tmp_path / 'data'))
  expected = [next(data) for _ in range(3)]
  resumed = input_pipeline.create_train_iterator(config)
  resumed.restore(prefix)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_random_flip_is_deterministic_and_flips(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10,
                       random_flip=True, batch_size=64, num_d_steps=1)
  plain = next(input_pipeline.create_train_iterator(
      tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10, batch_size=64,
                  num_d_steps=1)))['image'][0]
  flipped = next(input_pipeline.create_train_iterator(config))['image'][0]
  again = next(input_pipeline.create_train_iterator(config))['image'][0]
  np.testing.assert_array_equal(flipped, again)
  mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
              for f, p in zip(flipped, plain)]
  same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
  assert all(m or s for m, s in zip(mirrored, same)) and 10 < sum(mirrored) < 54


@pytest.mark.parametrize('name, size, classes', [('imagenet128', 128, 1000), ('cifar10', 32, 10)])
def test_mock_tfds_datasets_assemble_global_batches_on_8_devices(tmp_path, name, size, classes):
  config = load_config(name, data_dir=str(tmp_path), batch_size=16, shuffle_buffer=8,
                       num_d_steps=2)
  mesh = train.make_mesh()
  with tfds.testing.mock_data(num_examples=40):
    batch = train.shard_batch(next(input_pipeline.create_train_iterator(config)), mesh)
  assert batch['image'].shape == (2, 16, size, size, 3) and batch['image'].dtype == jnp.uint8
  assert batch['label'].shape == (2, 16) and batch['label'].dtype == jnp.int32
  assert len(batch['image'].sharding.device_set) == 8
  assert batch['image'].addressable_shards[0].data.shape == (2, 2, size, size, 3)
  labels = np.asarray(batch['label'])
  assert labels.min() >= 0 and labels.max() < classes
  images = np.asarray(batch['image'])
  assert images.min() >= 0 and images.max() <= 255 and images.std() > 10


def test_unlabelled_dataset_needs_one_class_and_gets_label_zero(tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    with pytest.raises(input_pipeline.DataError, match=r'config.num_classes=4 but celeb_a has 1 '
                                                       r'class: set --config.num_classes=1'):
      input_pipeline.create_train_iterator(tiny_config(dataset='celeb_a', data_dir=str(tmp_path)))
    config = tiny_config(dataset='celeb_a', data_dir=str(tmp_path), num_classes=1, image_size=32,
                         shuffle_buffer=8)
    batch = next(input_pipeline.create_train_iterator(config))
  assert batch['image'].shape == (2, 8, 32, 32, 3) and not batch['label'].any()


def _missing_dataset_error(name, data_dir, num_classes):
  """Runs in a subprocess with a hard timeout: it must fail at once, never hang."""
  code = f"""
import time
from sagan_jax import input_pipeline
from sagan_jax.config import default_config
c = default_config()
c.dataset, c.data_dir, c.num_classes = {name!r}, {data_dir!r}, {num_classes}
start = time.time()
try:
  input_pipeline.create_train_iterator(c)
except input_pipeline.DataError as e:
  print(round(time.time() - start, 1), e)
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  seconds, message = result.stdout.strip().split(' ', 1)
  return float(seconds), message


def test_missing_datasets_fail_at_once_with_the_fix(tmp_path):
  seconds, message = _missing_dataset_error('imagenet2012', str(tmp_path), 1000)
  assert seconds < 10
  assert message == (f'imagenet2012 is not prepared in {tmp_path}: put ILSVRC2012_img_train.tar '
                     f'and ILSVRC2012_img_val.tar in {tmp_path}/downloads/manual/ and run once: '
                     f'tfds build imagenet2012 --data_dir={tmp_path}')
  seconds, message = _missing_dataset_error('cifar10', str(tmp_path), 10)
  assert seconds < 10 and message.endswith(f'tfds build cifar10 --data_dir={tmp_path}')
  seconds, message = _missing_dataset_error('no_such_dataset', str(tmp_path), 10)
  assert "config.dataset='no_such_dataset' is not a TFDS dataset" in message


def test_two_processes_read_disjoint_parts_that_cover_the_split(tfds_dir):
  input_pipeline.get_builder(tiny_config(dataset='sagan_shapes', data_dir=tfds_dir,
                                         num_classes=10))  # prepared once, here
  outputs = run_workers('data_worker.py', 2, 1, tfds_dir)
  first, second = (set(o['ids']) for o in outputs)
  assert len(first) == len(second) == 500
  assert not first & second
  assert len(first | second) == shapes_dataset.SPLITS['test'][0]
  assert [o['batch_shape'] for o in outputs] == [[2, 4, 32, 32, 3]] * 2  # half the batch each


def _write_image_folder(root):
  """Two classes of good files in five formats, and one truncated JPEG."""
  rng = np.random.default_rng(0)
  (root / 'cats').mkdir(parents=True)
  (root / 'dogs').mkdir()
  Image.fromarray(rng.integers(0, 256, (40, 60, 3), np.uint8)).save(root / 'cats' / 'wide.jpg')
  Image.fromarray(rng.integers(0, 256, (50, 50, 3), np.uint8)).save(root / 'cats' / 'rgb.png')
  Image.fromarray(np.full((50, 50), 77, np.uint8)).save(root / 'dogs' / 'gray.png')
  Image.fromarray(rng.integers(0, 256, (50, 50, 4), np.uint8)).save(root / 'dogs' / 'rgba.png')
  Image.fromarray(rng.integers(0, 256, (50, 50, 4), np.uint8), 'CMYK').save(root / 'dogs' / 'cmyk.jpg')
  data = (root / 'cats' / 'wide.jpg').read_bytes()
  (root / 'dogs' / 'truncated.jpg').write_bytes(data[:len(data) // 2])


def test_image_folder_keeps_every_good_image_and_counts_the_bad_one(tmp_path, caplog):
  _write_image_folder(tmp_path / 'images')
  config = tiny_config(dataset=f'folder:{tmp_path / "images"}', data_dir=str(tmp_path / 'tfds'),
                       num_classes=2, image_size=32, batch_size=5, num_d_steps=1, shuffle_buffer=5)
  with caplog.at_level(logging.WARNING):
    builder = input_pipeline.get_builder(config)
  assert builder.info.features['label'].names == ['cats', 'dogs']
  assert builder.info.splits['train'].num_examples == 5
  assert 'Skipped 1 unreadable files of 6' in caplog.text and 'truncated.jpg' in caplog.text
  examples = list(tfds.as_numpy(builder.as_dataset(split='train')))
  assert all(ex['image'].shape == (32, 32, 3) for ex in examples)
  gray = [ex['image'] for ex in examples if (ex['image'] == 77).all()]
  assert len(gray) == 1  # the grayscale file became RGB with equal channels
  data = input_pipeline.create_train_iterator(config)
  batches = [next(data) for _ in range(4)]
  assert all(b['image'].shape == (1, 5, 32, 32, 3) for b in batches)
  assert set(np.concatenate([b['label'].ravel() for b in batches])) == {0, 1}
  with pytest.raises(input_pipeline.DataError, match='must be a folder of class folders'):
    input_pipeline.get_builder(tiny_config(dataset=f'folder:{tmp_path / "nothing"}'))


def test_prepare_writes_a_resized_copy_that_trains(tfds_dir):
  input_pipeline.get_builder(tiny_config(dataset='sagan_shapes', data_dir=tfds_dir,
                                         num_classes=10))
  config = tiny_config(dataset='resized:sagan_shapes', data_dir=tfds_dir, num_classes=10,
                       image_size=64)
  with pytest.raises(input_pipeline.DataError, match=r'no 64px copy of sagan_shapes .* python -m '
                                                     r'sagan_jax.prepare --dataset=sagan_shapes'):
    input_pipeline.create_train_iterator(config)
  result = subprocess.run([sys.executable, '-m', 'sagan_jax.prepare', '--dataset=sagan_shapes',
                           '--image_size=64', f'--data_dir={tfds_dir}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  batch = next(input_pipeline.create_train_iterator(config))
  assert batch['image'].shape == (2, 8, 64, 64, 3) and batch['image'].dtype == np.uint8
  builder = input_pipeline.get_builder(config)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 10_000,
                                                                         'test': 1_000}
