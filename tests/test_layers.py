"""Spectral normalisation and self-attention against NumPy references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sagan_jax.layers import (SelfAttention, SNConv, SNDense, attention,
                              padded_dot_product_attention, spectral_normalize)


class Normalized(nn.Module):
  """Returns the spectrally normalised weight itself."""
  shape: tuple

  @nn.compact
  def __call__(self):
    w = self.param('w', nn.initializers.normal(1.0), self.shape)
    return spectral_normalize(self, w, n_steps=1, eps=1e-12)


def _power_iterations(variables, module, times):
  step = jax.jit(lambda v: module.apply(v, mutable=['spectral'])[1])
  for _ in range(times):
    variables = {**variables, **step(variables)}
  return variables


def test_sigma_converges_to_top_singular_value_and_normalised_weight_has_norm_one():
  module = Normalized((3, 3, 4, 8))  # a conv kernel: a [36, 8] matrix
  variables = module.init(jax.random.PRNGKey(0))
  w = np.asarray(variables['params']['w']).reshape(36, 8)
  top = np.linalg.svd(w, compute_uv=False)[0]
  variables = _power_iterations(variables, module, 200)
  u = np.asarray(variables['spectral']['u'])
  np.testing.assert_allclose(np.linalg.norm(w @ u[0]), top, rtol=1e-5)  # sigma = ||W u||
  w_bar = np.asarray(module.apply(variables)).reshape(36, 8)
  np.testing.assert_allclose(np.linalg.svd(w_bar, compute_uv=False)[0], 1.0, rtol=1e-5)


def test_one_iteration_per_update_matches_numpy():
  module = Normalized((6, 5))
  variables = module.init(jax.random.PRNGKey(1))
  w = np.asarray(variables['params']['w'], np.float64)
  u = np.asarray(variables['spectral']['u'], np.float64)
  v = u @ w.T / np.linalg.norm(u @ w.T)
  u_next = v @ w / np.linalg.norm(v @ w)
  w_bar, new = module.apply(variables, mutable=['spectral'])
  np.testing.assert_allclose(new['spectral']['u'], u_next, rtol=1e-6)
  np.testing.assert_allclose(w_bar, w / np.linalg.norm(w @ u_next[0]), rtol=1e-5)


def test_state_untouched_when_not_updating():
  layer = SNDense(4)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 6))
  variables = layer.init(jax.random.PRNGKey(3), x)
  u = np.asarray(variables['spectral']['u'])
  # Inference: no 'spectral' in mutable, so nothing is written and sigma comes
  # from the stored u; twice the same answer.
  y1 = layer.apply(variables, x)
  y2, new = layer.apply(variables, x, mutable=['params'])
  assert 'spectral' not in new
  np.testing.assert_array_equal(y1, y2)
  w = np.asarray(variables['params']['kernel'])
  np.testing.assert_allclose(y1, x @ (w / np.linalg.norm(w @ u[0])), rtol=1e-5, atol=1e-6)
  # Training: u moves.
  _, new = layer.apply(variables, x, mutable=['spectral'])
  assert not np.allclose(new['spectral']['u'], u)


def _conv1x1(variables, name, x):
  """NumPy 1x1 conv with W / ||W u||, the layer's stored u."""
  w = np.asarray(variables['params'][name]['kernel'])[0, 0]
  u = np.asarray(variables['spectral'][name]['u'])[0]
  return x @ (w / np.linalg.norm(w @ u))


def _pool(x):  # [B, H, W, C] -> 2x2 max-pool
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _attention_reference(variables, x, variant):
  b, h, w, c = x.shape
  theta = _conv1x1(variables, 'theta', x).reshape(b, h * w, -1)
  phi, g = _conv1x1(variables, 'phi', x), _conv1x1(variables, 'g', x)
  if variant == 'sagan':
    phi, g = _pool(phi), _pool(g)
  phi, g = phi.reshape(b, -1, phi.shape[-1]), g.reshape(b, -1, g.shape[-1])
  logits = theta @ phi.transpose(0, 2, 1)
  beta = np.exp(logits - logits.max(-1, keepdims=True))
  beta /= beta.sum(-1, keepdims=True)
  o = (beta @ g).reshape(b, h, w, -1)
  if variant == 'sagan':
    o = _conv1x1(variables, 'o', o)
  return x + float(variables['params']['gamma']) * o, beta


def _attention(variant):
  return SelfAttention(functools.partial(SNConv, kernel_init=nn.initializers.normal(0.3)), variant)


def test_attention_matches_numpy_reference():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 16)))
  for variant, value_width in (('sagan', 8), ('simple', 16)):
    block = _attention(variant)
    variables = block.init(jax.random.PRNGKey(5), x)
    assert variables['params']['g']['kernel'].shape == (1, 1, 16, value_width)
    assert ('o' in variables['params']) == (variant == 'sagan')
    params = {**variables['params'], 'gamma': jnp.array(0.7)}
    variables = {**variables, 'params': params}
    out, sown = block.apply(variables, x, mutable=['intermediates'])
    expected, beta = _attention_reference(variables, x, variant)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # The weights sown for attention maps are the softmax the block uses.
    np.testing.assert_allclose(sown['intermediates']['beta'][0], beta, rtol=1e-4, atol=1e-6)


def test_attention_is_identity_at_gamma_zero():
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 8, 8, 16))
  block = _attention('sagan')
  variables = block.init(jax.random.PRNGKey(7), x)
  assert float(variables['params']['gamma']) == 0.0
  np.testing.assert_array_equal(block.apply(variables, x), x)


def test_padded_dot_product_attention_matches_plain_attention():
  """The cuDNN path's padding and scale, run here on jax's XLA implementation."""
  keys = jax.random.split(jax.random.PRNGKey(10), 3)
  theta = jax.random.normal(keys[0], (2, 64, 4))  # [B, N, C/8]
  phi = jax.random.normal(keys[1], (2, 16, 4))  # [B, N/4, C/8]
  g = jax.random.normal(keys[2], (2, 16, 16))  # [B, N/4, C/2]
  np.testing.assert_allclose(padded_dot_product_attention(theta, phi, g, 'xla'),
                             attention(theta, phi, g, 'xla'), rtol=1e-5, atol=1e-6)


def test_blocked_attention_is_the_two_einsums_with_their_gradients():
  """'blocked' (the CPU's): blocks of queries, each normalised after the values' matmul,
  its own backward, where the queries outnumber a block; the two einsums themselves below
  that. The blocked form also with the batch split over the devices, as in training."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sagan_jax.cpu_kernels import QUERY_BLOCK
  from sagan_jax.mesh import make_mesh
  keys = jax.random.split(jax.random.PRNGKey(11), 4)
  n, b = 4 * QUERY_BLOCK, jax.device_count()
  theta = 3 * jax.random.normal(keys[0], (b, n, 4))  # peaked weights: the max matters
  phi, g = jax.random.normal(keys[1], (b, n // 4, 4)), jax.random.normal(keys[2], (b, n // 4, 8))
  probe = jax.random.normal(keys[3], (b, n, 8))
  split = lambda x: jax.device_put(x, NamedSharding(make_mesh(), P('data')))
  results = [jax.jit(jax.value_and_grad(
      lambda t, p, v: jnp.sum(attention(t, p, v, impl) * probe), (0, 1, 2)))(*args)
             for impl, args in (('xla', (theta, phi, g)), ('blocked', (theta, phi, g)),
                                ('blocked', map(split, (theta, phi, g))))]
  for ours, xlas in zip(jax.tree.leaves(results[2]), jax.tree.leaves(results[0])):
    np.testing.assert_allclose(ours, xlas, rtol=1e-4, atol=1e-4 * float(jnp.abs(xlas).max()))
  for ours, xlas in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
    np.testing.assert_allclose(ours, xlas, rtol=1e-4, atol=1e-4 * float(jnp.abs(xlas).max()))
  few = theta[:, :QUERY_BLOCK]
  np.testing.assert_array_equal(attention(few, phi, g, 'blocked'), attention(few, phi, g, 'xla'))


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention needs an NVIDIA GPU')
def test_cudnn_and_xla_attention_agree():
  x = jax.random.normal(jax.random.PRNGKey(8), (4, 32, 32, 128), jnp.bfloat16)
  conv = functools.partial(SNConv, kernel_init=nn.initializers.normal(0.3), dtype=jnp.bfloat16)
  xla, cudnn = SelfAttention(conv, 'sagan', 'xla'), SelfAttention(conv, 'sagan', 'cudnn')
  variables = xla.init(jax.random.PRNGKey(9), x)
  variables = {**variables, 'params': {**variables['params'], 'gamma': jnp.array(0.7)}}
  out = lambda block: jax.jit(lambda v: block.apply(v, x).astype(jnp.float32))(variables)
  np.testing.assert_allclose(out(cudnn), out(xla), rtol=2e-2, atol=2e-2)  # bf16 round-off
  grad = lambda block: jax.jit(jax.grad(lambda v: block.apply(v, x).astype(jnp.float32).sum()))(
      variables)['params']['theta']['kernel']
  np.testing.assert_allclose(grad(cudnn), grad(xla), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('resample, size, width', [('up', 8, 5), ('down', 16, 5),
                                                   ('up', 8, 64), ('down', 16, 64)])
def test_fused_resampling_is_the_same_map_and_gradient_as_written(resample, size, width):
  """SNConv(fused) against the separate upsample + conv3x3 (conv3x3 + avg-pool): the
  same outputs, input gradient and kernel gradient (the custom one of `valid_conv`).
  At width 64 the kernel outweighs the output, and 1/sigma scales the output."""
  from sagan_jax.cpu_kernels import kernel_bound
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, width))
  layers = [SNConv(7, resample=resample, fused=fused) for fused in (False, True)]
  variables = layers[0].init(jax.random.PRNGKey(1), x)
  out_size = size * 2 if resample == 'up' else size // 2
  probe = jax.random.normal(jax.random.PRNGKey(2), (2, out_size, out_size, 7))
  assert kernel_bound((3, 3, width, 7), probe.shape) == (width == 64)
  results = []
  for layer in layers:
    loss = lambda params, x: jnp.sum(layer.apply({**variables, 'params': params}, x) * probe)
    y = layer.apply(variables, x)
    assert y.shape == probe.shape
    results.append((y, *jax.grad(loss, (0, 1))(variables['params'], x)))
  (y0, p0, x0), (y1, p1, x1) = results
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(x1, x0, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(p1['kernel'], p0['kernel'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(p1['bias'], p0['bias'], rtol=1e-4, atol=1e-4)
  # Below the size where fusing pays, the fused layer is the written one: exactly where
  # it is not kernel-bound (the test below covers the kernel-bound form).
  small = x[:, :4, :4] if resample == 'up' else x[:, :8, :8]
  if width == 5:
    np.testing.assert_array_equal(layers[1].apply(variables, small),
                                  layers[0].apply(variables, small))


@pytest.mark.parametrize('x_shape,kernel_size,stride,by_taps', [
    ((2, 6, 6, 64), 3, 1, True),  # wide at low resolution: im2col, dx by taps
    ((2, 10, 10, 16), 4, 2, True),  # D's fused 4x4 stride 2, kernel-bound
    ((2, 9, 9, 3), 2, 1, False),  # G's fused 2x2: kernel gradient by taps, XLA's dx
    ((2, 18, 18, 3), 4, 2, False),  # D's fused 4x4 stride 2: dx by output phases
    ((4, 11, 11, 3), 4, 2, False),  # the same with a last row no window reaches
    ((4, 18, 18, 2), 3, 1, False)])  # XLA's gradients
def test_valid_conv_is_xlas_convolution_and_gradients(x_shape, kernel_size, stride, by_taps):
  """valid_conv's own forms (im2col and per tap where `kernel_bound`) compute XLA's
  convolution and its gradients."""
  from sagan_jax.cpu_kernels import conv as _conv, kernel_bound, valid_conv
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (kernel_size, kernel_size, x_shape[-1], 8))
  out = jax.eval_shape(lambda: _conv(x, kernel, 'VALID', stride))
  assert kernel_bound(kernel.shape, out.shape) == by_taps
  np.testing.assert_allclose(valid_conv(x, kernel, stride), _conv(x, kernel, 'VALID', stride),
                             rtol=1e-4, atol=1e-4)
  probe = jax.random.normal(jax.random.PRNGKey(2), out.shape)
  grads = [jax.grad(lambda x, k: jnp.sum(conv(x, k) * probe), (0, 1))(x, kernel)
           for conv in (lambda x, k: valid_conv(x, k, stride),
                        lambda x, k: _conv(x, k, 'VALID', stride))]
  for ours, xlas in zip(*grads):
    np.testing.assert_allclose(ours, xlas, rtol=1e-4, atol=1e-4 * float(jnp.abs(xlas).max()))


def test_kernel_bound_conv_through_valid_conv_is_the_written_layer():
  """A wide 3x3 SNConv at 4x4 with `fused` (valid_conv on the padded input) is the
  plain SAME convolution: outputs and both gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  layers = [SNConv(16, fused=fused) for fused in (False, True)]
  variables = layers[0].init(jax.random.PRNGKey(1), x)
  results = [(layer.apply(variables, x), *jax.grad(
      lambda p, x: jnp.sum(layer.apply({**variables, 'params': p}, x) ** 2), (0, 1))(
          variables['params'], x)) for layer in layers]
  for ours, written in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
    np.testing.assert_allclose(ours, written, rtol=1e-4, atol=1e-4 * float(jnp.abs(written).max()))


def test_valid_conv_kernel_gradient_sums_over_devices_under_shard_map():
  """A kernel shared by the devices of a shard_map gets the sum of their gradients, as
  with XLA's convolution (what bn_per_device's G step relies on)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sagan_jax.cpu_kernels import conv as _conv, valid_conv
  from sagan_jax.mesh import make_mesh
  mesh = make_mesh()
  x = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 3)),
                     NamedSharding(mesh, P('data')))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 5))

  def grad(conv):
    per_device = lambda x, k: jnp.sum(conv(x, k) ** 2, keepdims=True)
    loss = lambda k: jnp.sum(jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'), P()),
                                           out_specs=P('data'))(x, k))
    return jax.jit(jax.grad(loss))(kernel)

  np.testing.assert_allclose(grad(lambda x, k: valid_conv(x, k, 2)),
                             grad(lambda x, k: _conv(x, k, 'VALID', 2)), rtol=1e-5, atol=1e-5)
