"""Every path a user gives goes through etils.epath, so gs:// works: proven offline on
a fake bucket (etils' mock_epath maps gs://bucket/... to a local directory). Code that
used os.path or open() on such a path would miss it, or write a local ./gs:/ directory."""
import contextlib
import os
from unittest import mock

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from sagan_jax import classifier, evaluation, modes, weights
from sagan_jax.mesh import make_mesh
from sagan_jax.options import Options
from tiny_config import shapes_config


@contextlib.contextmanager
def fake_bucket(root):
  """gs://bucket/... is root/bucket/... for every epath operation."""
  local = lambda p: os.path.join(root, os.fspath(p)[len('gs://'):]) if os.fspath(p).startswith(
      'gs://') else p
  one = lambda fn, path, *a, **k: fn(local(path), *a, **k)
  two = lambda fn, src, dst, *a, **k: fn(local(src), local(dst), *a, **k)
  # With TensorFlow installed, epath sends gs:// to tf.io.gfile whatever the mock says:
  # turn that choice off for the duration.
  with mock.patch.object(gpath, '_is_tf_installed', lambda: False), epath_testing.mock_epath(
      exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, open=one, remove=one,
      rmtree=one, stat=one, copy=two, rename=two, replace=two):
    yield


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # where a stray os.path write of 'gs://...' would land
  with fake_bucket(str(tmp_path / 'gcs')):
    yield tmp_path / 'gcs' / 'bucket'
  assert not (tmp_path / 'gs:').exists(), 'a gs:// path was written as a local path'


def test_the_fake_bucket_is_not_the_local_filesystem(bucket):
  path = epath.Path('gs://bucket/a/b.txt')
  path.parent.mkdir(parents=True)
  path.write_text('x')
  assert (bucket / 'a' / 'b.txt').read_text() == 'x' and not os.path.exists('gs://bucket/a')


def test_weights_reference_statistics_and_mode_outputs_on_gs(bucket, runs, tfds_dir):
  # Weight files (the classifier's, and Inception's existence check).
  params = classifier.load(classifier.SHIPPED)
  weights.save(params, 'gs://bucket/weights/classifier.npz')
  assert (bucket / 'weights' / 'classifier.npz').exists()
  mesh = make_mesh()
  config = shapes_config(tfds_dir, classifier_weights='gs://bucket/weights/classifier.npz')
  extractor = evaluation.make_extractor(config, mesh)
  np.testing.assert_array_equal(extractor.params['Dense_0']['bias'], params['Dense_0']['bias'])
  with pytest.raises(FileNotFoundError, match='no Inception weights at'):
    evaluation.make_extractor(config, mesh, 'inception', 'gs://bucket/weights/none.npz')
  # Reference statistics: written to, then read from, a gs:// reference_dir.
  first = evaluation.references(config, extractor, 40, 'gs://bucket/ref')[0]
  [name] = os.listdir(bucket / 'ref')
  again = evaluation.references(config, extractor, 40, 'gs://bucket/ref')[0]
  np.testing.assert_array_equal(first['mu'], again['mu'])
  assert name.endswith('_train_40.npz')
  # A mode's --out.
  written = modes.sample(runs[1], Options(classes='1', per_class=2, export_samples=3,
                                          format='npz', out='gs://bucket/out'))
  assert all(path.startswith('gs://bucket/out/') for path in written)
  assert sorted(os.listdir(bucket / 'out')) == sorted(os.path.basename(p) for p in written)


def test_an_image_folder_on_gs(bucket):
  from PIL import Image
  from sagan_jax import resized_dataset
  for name in ('cats', 'dogs'):
    (bucket / 'images' / name).mkdir(parents=True)
    Image.new('RGB', (40, 30), (200, 10, 10)).save(bucket / 'images' / name / 'a.png')
  assert resized_dataset.folder_classes('gs://bucket/images') == ['cats', 'dogs']
  image = resized_dataset.load_image('gs://bucket/images/dogs/a.png', 16)
  assert image.shape == (16, 16, 3) and tuple(image[8, 8]) == (200, 10, 10)
