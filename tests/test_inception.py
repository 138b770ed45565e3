"""The FID Inception-v3, checked against Keras's Inception-v3 carrying the same
random weights (offline), block by block where the two are the same network,
plus the FID-specific pieces where they are not; and, where torch and
pytorch-fid are installed, against pytorch-fid's own network end to end."""
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import linen as nn

from sagan_jax import inception


def conv_call_order(model, x):
  """Paths of the BasicConv layers in the order they run (Keras's creation order)."""
  order = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, inception.BasicConv) and context.method_name == '__call__':
      order.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = model.init(jax.random.PRNGKey(0), x)
  return variables['params'], order


@pytest.fixture(scope='module')
def carried():
  """Keras's InceptionV3 (1008 classes, random weights, random BN statistics) and
  the Flax model with the same weights; both on the same 299x299 image."""
  keras_model = tf.keras.applications.InceptionV3(weights=None, classes=1008)
  rng = np.random.default_rng(0)
  index = lambda layer: int(re.sub(r'\D', '', layer.name.split('_')[-1]) or 0) \
      if re.search(r'_\d+$', layer.name) else 0
  keras_convs = sorted([l for l in keras_model.layers if isinstance(l, tf.keras.layers.Conv2D)],
                       key=index)
  keras_bns = sorted([l for l in keras_model.layers
                      if isinstance(l, tf.keras.layers.BatchNormalization)], key=index)
  model = inception.InceptionV3()
  params, order = conv_call_order(model, jnp.zeros((1, 299, 299, 3)))
  params = jax.tree.map(np.array, params)

  def layer(path):
    p = params
    for name in path:
      p = p[name]
    return p
  flax_convs = [(path, layer(path)) for path in order]
  assert len(flax_convs) == len(keras_convs) == len(keras_bns) == 94
  for (path, p), c, bn in zip(flax_convs, keras_convs, keras_bns):
    kernel = rng.normal(0, np.sqrt(2 / np.prod(c.kernel.shape[:3])), c.kernel.shape)
    beta, mean = rng.normal(0, 0.1, (2, p['mean'].shape[0]))
    var = rng.uniform(0.5, 2, p['var'].shape)
    assert p['kernel'].shape == kernel.shape, (path, c.name)
    c.set_weights([kernel])
    bn.set_weights([beta, mean, var])
    p.update(kernel=kernel.astype(np.float32), bias=beta.astype(np.float32),
             mean=mean.astype(np.float32), var=var.astype(np.float32))
  dense = keras_model.get_layer('predictions')
  w, b = rng.normal(0, 0.02, (2048, 1008)), rng.normal(0, 0.1, 1008)
  dense.set_weights([w, b])
  params['fc'] = {'kernel': w.astype(np.float32), 'bias': b.astype(np.float32)}
  image = rng.integers(0, 256, (1, 150, 200, 3), np.uint8)
  x = np.asarray(inception.preprocess(jnp.asarray(image)))
  (features, logits), state = jax.jit(lambda p, x: model.apply(
      {'params': p}, x, capture_intermediates=True))(params, x)
  names = ['mixed%d' % i for i in range(11)] + ['avg_pool', 'predictions']
  probe = tf.keras.Model(keras_model.input, [keras_model.get_layer(n).output for n in names])
  keras_out = dict(zip(names, [np.asarray(o) for o in probe(x, training=False)]))
  return keras_model, keras_out, state['intermediates'], np.asarray(features), np.asarray(
      logits), (w, b)


BLOCKS = ['Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d',
          'Mixed_6e', 'Mixed_7a', 'Mixed_7b']


def close(a, b):
  scale = np.abs(b).max()
  np.testing.assert_allclose(a / scale, b / scale, atol=2e-5)


def test_blocks_match_keras_where_the_networks_agree(carried):
  _, keras_out, intermediates, _, _, _ = carried
  for i, block in enumerate(BLOCKS):  # Keras's mixed0..mixed9
    close(np.asarray(intermediates[block]['__call__'][0]), keras_out[f'mixed{i}'])


def test_last_block_pools_with_max_and_heads_are_2048_and_1008(carried):
  keras_model, keras_out, intermediates, features, logits, (w, b) = carried
  ours = np.asarray(intermediates['Mixed_7c']['__call__'][0])
  assert ours.shape == (1, 8, 8, 2048) and features.shape == (1, 2048)
  assert logits.shape == (1, 1008)
  # The branches before the pool branch are Keras's mixed10 ...
  close(ours[..., :1856], keras_out['mixed10'][..., :1856])
  # ... the pool branch is Keras's conv + BN on a 3x3 *max* pool of mixed9.
  conv = [l for l in keras_model.layers if isinstance(l, tf.keras.layers.Conv2D)][-1]
  bn = [l for l in keras_model.layers if isinstance(l, tf.keras.layers.BatchNormalization)][-1]
  pooled = tf.nn.max_pool2d(keras_out['mixed9'], 3, 1, 'SAME')
  expected = tf.nn.relu(bn(conv(pooled), training=False)).numpy()
  close(ours[..., 1856:], expected)
  assert not np.allclose(ours[..., 1856:], keras_out['mixed10'][..., 1856:], atol=1e-3)
  # Features are the global mean of that block (Keras's avg_pool, on its own mixed10);
  # the logits, 1008 of them, are the carried dense layer on them.
  close(features, ours.mean(axis=(1, 2)))
  close(keras_out['avg_pool'], keras_out['mixed10'].mean(axis=(1, 2)))
  close(logits, features.astype(np.float64) @ w + b)


def test_average_pools_exclude_padding():
  ones = jnp.ones((1, 5, 5, 2))
  np.testing.assert_array_equal(inception.avg_pool_3x3(ones), ones)  # corners: 4/4, not 4/9
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  assert float(inception.avg_pool_3x3(x)[0, 0, 0, 0]) == pytest.approx((0 + 1 + 3 + 4) / 4)


def test_resize_is_bilinear_with_half_pixel_centres_and_no_antialiasing():
  image = np.random.default_rng(0).integers(0, 256, (1, 64, 48, 3), np.uint8)
  ours = np.asarray(inception.preprocess(jnp.asarray(image)))
  # TF's bilinear resize with half-pixel centres is torch's align_corners=False.
  expected = tf.image.resize(image.astype(np.float32) / 255, (299, 299), 'bilinear',
                             antialias=False).numpy() * 2 - 1
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  assert ours.shape == (1, 299, 299, 3) and ours.min() >= -1 and ours.max() <= 1


def test_pytorch_fid_weights_convert_and_load(tmp_path):
  """A state dict laid out as pytorch-fid's (names, OIHW kernels, [out, in] fc)
  made from known params converts back to exactly those params."""
  params, order = conv_call_order(inception.InceptionV3(), jnp.zeros((1, 299, 299, 3)))
  params = jax.tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape)
                        .astype(np.float32), params)
  state = {'fc.weight': params['fc']['kernel'].T, 'fc.bias': params['fc']['bias']}
  for path in order:
    p = params
    for name in path:
      p = p[name]
    prefix = '.'.join(path)
    state.update({f'{prefix}.conv.weight': p['kernel'].transpose(3, 2, 0, 1),
                  f'{prefix}.bn.weight': p['scale'], f'{prefix}.bn.bias': p['bias'],
                  f'{prefix}.bn.running_mean': p['mean'], f'{prefix}.bn.running_var': p['var'],
                  f'{prefix}.bn.num_batches_tracked': np.array(0)})
  np.savez(tmp_path / 'w.npz', **inception.from_pytorch_fid(state))
  loaded = inception.load_params(str(tmp_path / 'w.npz'))
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert sum(x.size for x in jax.tree.leaves(loaded)) == 23_885_392
  np.savez(tmp_path / 'bad.npz', **{'fc/kernel': np.zeros((3, 3))})
  with pytest.raises(ValueError, match='not a converted FID Inception file'):
    inception.load_params(str(tmp_path / 'bad.npz'))


@pytest.mark.skipif(not os.environ.get('SAGAN_JAX_INCEPTION'),
                    reason='set SAGAN_JAX_INCEPTION to a converted weight file')
def test_real_weights_classify_and_give_zero_fid_to_a_set_and_itself():
  from sagan_jax import metrics
  params = inception.load_params(os.environ['SAGAN_JAX_INCEPTION'])
  images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), np.uint8)
  features, logits = jax.jit(lambda p, x: inception.InceptionV3().apply(
      {'params': p}, inception.preprocess(x)))(params, jnp.asarray(images))
  assert features.shape == (16, 2048) and float(features.min()) >= 0  # after ReLU and a mean
  mu, sigma = metrics.moments(features)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def pytorch_fid_module():
  """pytorch_fid.inception, or a skip. torchvision's compiled ops do not load with
  torch's CPU-only wheel, but the Inception code pytorch-fid builds on is pure
  Python: then torchvision is imported without its package __init__."""
  pytest.importorskip('torch')
  if not (importlib.util.find_spec('torchvision') and importlib.util.find_spec('pytorch_fid')):
    pytest.skip('pip install torch torchvision pytorch-fid to compare with pytorch-fid')
  try:
    import torchvision  # noqa: F401
  except RuntimeError:  # "operator torchvision::nms does not exist"
    for name in [m for m in sys.modules if m.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    stub = types.ModuleType('torchvision')
    stub.__path__ = list(importlib.util.find_spec('torchvision').submodule_search_locations)
    stub.__version__ = importlib.metadata.version('torchvision')
    sys.modules['torchvision'] = stub
  from pytorch_fid import inception as fid
  return fid


def test_outputs_equal_pytorch_fids(tmp_path, monkeypatch):
  """pytorch-fid's own network (its FID blocks, its resize to 299 and scaling)
  and ours, from one .pth through the converter command. The weights are random,
  with random batch-norm statistics; with SAGAN_JAX_INCEPTION_PTH naming
  pytorch-fid's real file they are the real ones, and this is the known-output
  check of the real network."""
  fid = pytorch_fid_module()
  import torch
  import torchvision
  pth = os.environ.get('SAGAN_JAX_INCEPTION_PTH')
  if not pth:
    torch.manual_seed(0)  # torchvision's Inception-v3 has the FID network's names and shapes
    state = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False,
                                            init_weights=False).state_dict()
    for name, value in state.items():
      if name.endswith('running_var'):
        value.uniform_(0.5, 2.0)
      elif name.endswith(('running_mean', 'bn.bias')):
        value.normal_(0.0, 0.1)
      elif name.endswith('bn.weight'):
        value.uniform_(0.5, 1.5)
    pth = str(tmp_path / 'random.pth')
    torch.save(state, pth)
  monkeypatch.setattr(fid, 'load_state_dict_from_url',
                      lambda *args, **kwargs: torch.load(pth, weights_only=True))
  reference = fid.InceptionV3([3]).eval()  # pool features of images in [0, 1], any size
  fc = torch.load(pth, weights_only=True)
  images = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), np.uint8)
  with torch.no_grad():
    want = reference(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]
  want_features = want[:, :, 0, 0].numpy().astype(np.float64)
  want_logits = want_features @ fc['fc.weight'].numpy().T + fc['fc.bias'].numpy()

  npz = str(tmp_path / 'inception.npz')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-m', 'sagan_jax.convert_inception', f'--pth={pth}',
                  f'--out={npz}'], cwd=root, check=True, capture_output=True)
  features, logits = jax.jit(lambda p, x: inception.InceptionV3().apply(
      {'params': p}, inception.preprocess(x)))(inception.load_params(npz), jnp.asarray(images))
  for ours, theirs in ((features, want_features), (logits, want_logits)):
    ours = np.asarray(ours, np.float64)
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error < 1e-4, error
