"""Spectrally normalised layers, conditional batch norm and self-attention.

Spectral normalisation (Miyato et al. 2018) is written here, not taken from
`flax.linen.SpectralNorm`, for two reasons:
- flax runs the power iteration at the default matmul precision, which is TF32
  on recent GPUs and bf16 passes on TPU and biases sigma; here it is float32 at
  HIGHEST precision whatever the layer's compute dtype;
- flax runs the iteration again on every call, also when the result is thrown
  away (sampling, the generator step's pass through D); here it runs only when
  the state is updated.

The state is one vector u per weight, shape [1, C_out], in the `spectral`
collection. u advances (n power iterations) exactly when the caller makes that
collection mutable: `apply(..., mutable=['spectral'])` in training, a plain
`apply` when sampling or evaluating. sigma is then ||W u|| for the unit u in
the state, the Rayleigh estimate of W's top singular value, so training and
evaluation with the same weights and state see the same sigma.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from sagan_jax.cpu_kernels import QUERY_BLOCK, blocked_attention, convolve

Initializer = Callable[..., jax.Array]
HIGHEST = jax.lax.Precision.HIGHEST


def _l2_normalize(x, eps):
  """x / max(||x||, eps), as torch's F.normalize (StudioGAN's eps 1e-6); TensorFlow's
  l2_normalize (the authors' code) floors ||x||^2 at eps instead. Either floor acts only
  on a vanishing vector, which the power iteration of a nonzero weight never makes."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x)), eps)


def spectral_normalize(module: nn.Module, w: jax.Array, n_steps: int, eps: float) -> jax.Array:
  """Returns w / sigma(w); keeps u in `module`'s `spectral` collection."""
  return w / spectral_sigma(module, w, n_steps, eps)


def spectral_sigma(module: nn.Module, w: jax.Array, n_steps: int, eps: float) -> jax.Array:
  """sigma(w), advancing u in `module`'s `spectral` collection when it is mutable."""
  w_mat = w.reshape(-1, w.shape[-1]).astype(jnp.float32)  # [k*k*C_in, C_out]
  u_var = module.variable(
      'spectral', 'u',
      lambda: _l2_normalize(jax.random.normal(module.make_rng('params'), (1, w_mat.shape[1])), eps))
  u = u_var.value  # [1, C_out]
  if module.is_mutable_collection('spectral') and not module.is_initializing():
    u = u_var.value = power_iteration(w_mat, u, n_steps, eps)
  return sigma(w_mat, u)


def power_iteration(w_mat, u, n_steps: int, eps: float):
  """u [1, C_out] after n_steps power iterations with W [K, C_out], no gradient."""
  for _ in range(n_steps):
    v = _l2_normalize(jnp.matmul(u, w_mat.T, precision=HIGHEST), eps)  # [1, K]
    u = _l2_normalize(jnp.matmul(v, w_mat, precision=HIGHEST), eps)
  return jax.lax.stop_gradient(u)


def sigma(w_mat, u):
  """||W u||: the top singular value of W [K, C_out] as the unit u [1, C_out]
  estimates it. Its gradient is v^T u, as in the paper (u, v held fixed)."""
  return jnp.sqrt(jnp.sum(jnp.square(jnp.matmul(u, w_mat.T, precision=HIGHEST))))


def _weight_matrices(params, spectral):
  """(W [K, C_out] float32, u) of every spectrally normalised weight of a network."""
  out = []
  for path, u in jax.tree_util.tree_flatten_with_path(spectral)[0]:
    layer = params
    for key in path[:-1]:
      layer = layer[key.key]
    w = layer['kernel'] if 'kernel' in layer else layer['embedding']
    out.append((w.reshape(-1, w.shape[-1]).astype(jnp.float32), u))
  return out


def spectral_sigmas(params, spectral) -> list[jax.Array]:
  """sigma of every spectrally normalised weight, from a network's variables."""
  return [sigma(w, u) for w, u in _weight_matrices(params, spectral)]


def advance_spectral(params, spectral, n_steps: int, eps: float):
  """The `spectral` collection after one update of every u: what a call with the
  collection mutable stores. A call with the result, not mutable, then normalises by
  the same sigmas as that call (gradient accumulation advances u once this way and
  runs every micro-batch with it)."""
  leaves = [power_iteration(w, u, n_steps, eps) for w, u in _weight_matrices(params, spectral)]
  return jax.tree.unflatten(jax.tree.structure(spectral), leaves)


def class_rows(table, y):
  """Per-class rows of `table` [num_classes, C]: y int [B] picks them; y float
  [B, num_classes] mixes them (interpolating between classes)."""
  if jnp.issubdtype(y.dtype, jnp.integer):
    return jnp.take(table, y, axis=0)
  return jnp.matmul(y.astype(table.dtype), table, precision=HIGHEST)


class _SNLayer(nn.Module):
  """Fields and helpers shared by SNConv and SNDense."""
  features: int
  use_bias: bool = True
  n_steps: int = 1
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32

  def kernel_and_sigma(self, shape):
    """The kernel as stored and its sigma (float32)."""
    w = self.param('kernel', self.kernel_init, shape)
    return w, spectral_sigma(self, w, self.n_steps, self.eps)

  def kernel(self, shape):
    """The spectrally normalised kernel in the compute dtype."""
    w, s = self.kernel_and_sigma(shape)
    return (w / s).astype(self.dtype)

  def add_bias(self, y):
    if not self.use_bias:
      return y
    return y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)


class SNConv(_SNLayer):
  """Spectrally normalised 2-D convolution, NHWC, stride 1, SAME padding; `resample='up'`
  convolves the input upsampled 2x (nearest neighbour) and `'down'` average-pools the
  output 2x2, as SAGAN's blocks do. `fused`: in the CPU's forms (cpu_kernels.convolve),
  the same linear map from the same weights."""
  kernel_size: int = 3
  resample: str = ''  # '', 'up' or 'down'
  fused: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    w, sigma = self.kernel_and_sigma((k, k, x.shape[-1], self.features))
    return self.add_bias(convolve(x.astype(self.dtype), w, sigma, self.resample, self.fused))


class SNDense(_SNLayer):
  """Spectrally normalised linear layer."""

  @nn.compact
  def __call__(self, x):
    return self.add_bias(jnp.dot(x.astype(self.dtype), self.kernel((x.shape[-1], self.features))))


class SNEmbed(nn.Module):
  """Spectrally normalised class embedding (the projection D's <embed(y), h>): the
  rows of y int [B], or their mix for y float [B, num_classes] (a linear map of it)."""
  num_embeddings: int
  features: int
  n_steps: int = 1
  eps: float = 1e-12
  embedding_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y):
    table = self.param('embedding', self.embedding_init, (self.num_embeddings, self.features))
    table = spectral_normalize(self, table, self.n_steps, self.eps)
    return class_rows(table, y).astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
  """Batch norm without affine terms, then a per-class gain and bias.

  `gain_bias='tables'` (the authors' code): plain per-class tables, the gain
  starting at 1 and the bias at 0, not spectrally normalised. 'sn_linear'
  (StudioGAN, BigGAN-PyTorch): gain = 1 + W_g y and bias = W_b y for the one-hot
  y, with W_g, W_b [num_classes, C] spectrally normalised and drawn by
  `kernel_init`, so every class has its own modulation from the first step.
  Statistics are over the whole (global) batch when training.
  """
  num_classes: int
  momentum: float = 0.999
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  gain_bias: str = 'tables'  # or 'sn_linear'
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  sn_steps: int = 1
  sn_eps: float = 1e-12

  @nn.compact
  def __call__(self, x, y, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, use_scale=False, use_bias=False,
                     dtype=self.dtype)(x)
    shape = (self.num_classes, x.shape[-1])
    if self.gain_bias == 'sn_linear':
      linear = lambda name: SNEmbed(*shape, n_steps=self.sn_steps, eps=self.sn_eps,
                                    embedding_init=self.kernel_init, name=name)(y)
      gain, bias = 1 + linear('gain'), linear('bias')
    else:
      gain = class_rows(self.param('gain', nn.initializers.ones, shape), y)
      bias = class_rows(self.param('bias', nn.initializers.zeros, shape), y)
    gain = gain[:, None, None, :].astype(self.dtype)  # [B, 1, 1, C]
    return x * gain + bias[:, None, None, :].astype(self.dtype)


def max_pool_2x2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def attention(theta, phi, g, implementation: str = 'xla'):
  """softmax(theta phi^T) g, the softmax over keys, unscaled, in float32.

  theta [B, N, d] queries, phi [B, M, d] keys, g [B, M, v] values -> [B, N, v].
  'xla': two einsums; 'blocked': `blocked_attention` where N is a multiple of
  QUERY_BLOCK above it, else the two einsums; 'cudnn': cuDNN flash attention (NVIDIA
  GPU, bf16).
  """
  n = theta.shape[1]
  if implementation == 'blocked' and n > QUERY_BLOCK and n % QUERY_BLOCK == 0:
    return blocked_attention(theta, phi, g, QUERY_BLOCK)
  if implementation in ('xla', 'blocked'):
    return jnp.einsum('bnm,bmv->bnv', attention_weights(theta, phi).astype(g.dtype), g)
  return padded_dot_product_attention(theta, phi, g, implementation)


def attention_weights(theta, phi):
  """beta [B, N, M] = softmax over keys of theta phi^T: where each query looks."""
  logits = jnp.einsum('bnd,bmd->bnm', theta, phi, preferred_element_type=jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


def padded_dot_product_attention(theta, phi, g, implementation: str):
  """`jax.nn.dot_product_attention` with one head. It wants one width for
  queries, keys and values, so theta and phi are zero-padded to g's width: the
  logits do not change, and scale=1.0 keeps them unscaled."""
  width = g.shape[-1]
  pad = lambda t: jnp.pad(t, ((0, 0), (0, 0), (0, width - t.shape[-1])))[:, :, None, :]
  out = jax.nn.dot_product_attention(pad(theta), pad(phi), g[:, :, None, :], scale=1.0,
                                     implementation=implementation)
  return out[:, :, 0, :]


class SelfAttention(nn.Module):
  """SAGAN self-attention block: y = x + gamma * o.

  With the `intermediates` collection mutable it also sows its weights `beta`
  [B, N, M] (queries at H x W, keys at H/2 x W/2 for 'sagan', H x W for 'simple').

  'sagan' (the authors' code, default): theta C/8 at full resolution, phi C/8
  and g C/2 max-pooled 2x2, an output conv C/2 -> C. 'simple' (the paper's
  text): theta C/8, phi C/8, g C, no pooling, no output conv. Both use an
  unscaled softmax over the keys and bias-free spectrally normalised 1x1 convs.
  """
  conv: Callable[..., nn.Module]  # an SNConv partial
  variant: str = 'sagan'
  implementation: str = 'xla'  # of `attention`: 'xla', 'blocked' or 'cudnn'

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    conv1x1 = lambda features, name: self.conv(features, kernel_size=1, use_bias=False, name=name)
    theta = conv1x1(c // 8, 'theta')(x).reshape(b, h * w, c // 8)  # [B, N, C/8] queries
    phi = conv1x1(c // 8, 'phi')(x)
    g = conv1x1(c // 2 if self.variant == 'sagan' else c, 'g')(x)
    if self.variant == 'sagan':
      phi, g = max_pool_2x2(phi), max_pool_2x2(g)
    phi = phi.reshape(b, -1, c // 8)  # [B, M, C/8] keys, M = N/4 ('sagan') or N
    g = g.reshape(b, -1, g.shape[-1])  # [B, M, C/2 or C] values
    if self.is_mutable_collection('intermediates'):  # attention maps asked for
      self.sow('intermediates', 'beta', attention_weights(theta, phi))
    o = attention(theta, phi, g, self.implementation).reshape(b, h, w, -1)
    if self.variant == 'sagan':
      o = conv1x1(c, 'o')(o)
    gamma = self.param('gamma', nn.initializers.zeros, ())
    return x + gamma.astype(o.dtype) * o
