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
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]
HIGHEST = jax.lax.Precision.HIGHEST


def _l2_normalize(x, eps):
  return x * jax.lax.rsqrt(jnp.sum(x * x) + eps)


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
    for _ in range(n_steps):
      v = _l2_normalize(jnp.matmul(u, w_mat.T, precision=HIGHEST), eps)  # [1, k*k*C_in]
      u = _l2_normalize(jnp.matmul(v, w_mat, precision=HIGHEST), eps)
    u = jax.lax.stop_gradient(u)
    u_var.value = u
  return sigma(w_mat, u)


def sigma(w_mat, u):
  """||W u||: the top singular value of W [K, C_out] as the unit u [1, C_out]
  estimates it. Its gradient is v^T u, as in the paper (u, v held fixed)."""
  return jnp.sqrt(jnp.sum(jnp.square(jnp.matmul(u, w_mat.T, precision=HIGHEST))))


def spectral_sigmas(params, spectral) -> list[jax.Array]:
  """sigma of every spectrally normalised weight, from a network's variables."""
  out = []
  for path, u in jax.tree_util.tree_flatten_with_path(spectral)[0]:
    layer = params
    for key in path[:-1]:
      layer = layer[key.key]
    w = layer['kernel'] if 'kernel' in layer else layer['embedding']
    out.append(sigma(w.reshape(-1, w.shape[-1]).astype(jnp.float32), u))
  return out


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


_f32 = dict(preferred_element_type=jnp.float32)  # matmuls that accumulate in float32
FUSED_MIN_SIZE = 8  # measured in BENCHMARKS.md (issue 17): slower at 4x4, faster from 8x8


class SNConv(_SNLayer):
  """Spectrally normalised 2-D convolution, NHWC, stride 1, SAME padding.

  `resample='up'` convolves the input upsampled 2x (nearest neighbour) and
  `'down'` average-pools the output 2x2, as SAGAN's blocks do. With `fused`
  each is one convolution at the low resolution with a kernel derived from the
  same 3x3 weights (`upsample_conv`, `conv_avg_pool_kernel`): the same linear
  map, up to float rounding, in 4/9 of the multiply-adds. Where the low
  resolution is under FUSED_MIN_SIZE the work in the kernel (16 or 4 x 4 taps
  against 9) outweighs that saving, and the layer stays as written. `fused` (the
  CPU's forms of the layer) also sends a `kernel_bound` 3x3 convolution through
  `valid_conv`, whose forms are the faster there.
  """
  kernel_size: int = 3
  resample: str = ''  # '', 'up' or 'down'
  fused: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    shape = (k, k, x.shape[-1], self.features)
    x = x.astype(self.dtype)
    out = {'up': 2 * x.shape[1], 'down': x.shape[1] // 2}.get(self.resample, x.shape[1])
    low = x.shape[1] if self.resample == 'up' else x.shape[1] // 2  # the low resolution
    fuse = self.fused and k == 3 and self.resample != '' and low >= FUSED_MIN_SIZE
    fused_up = fuse and self.resample == 'up'
    if self.resample == 'up' and not fuse:
      x = upsample_2x(x)
    by_valid_conv = fuse or (self.fused and k == 3 and kernel_bound(shape, x.shape))
    if by_valid_conv and not fused_up:  # upsample_conv pads its input itself
      x = _pad1(x)
    # Where the kernel outweighs the output, 1/sigma scales valid_conv's output, not its
    # kernel (the same linear map): passes over the output, forward and in the gradient.
    on_output = by_valid_conv and kernel_bound(shape, (x.shape[0], out, out))
    w, s = self.kernel_and_sigma(shape)
    w = w if on_output else w / s  # float32: the fused kernels are made before the cast
    if fused_up:
      y = upsample_conv(x, upsample_conv_kernel(w).astype(self.dtype))
    elif fuse:
      y = valid_conv(x, conv_avg_pool_kernel(w).astype(self.dtype), 2)
    elif by_valid_conv:
      y = valid_conv(x, w.astype(self.dtype), 1)
    else:
      y = _conv(x, w.astype(self.dtype), 'SAME')
    y = avg_pool_2x2(y) if self.resample == 'down' and not fuse else y
    return self.add_bias((y / s).astype(self.dtype) if on_output else y)


def _conv(x, kernel, padding, stride=1):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def kernel_bound(kernel_shape, out_shape) -> bool:
  """Whether a convolution's kernel [kh, kw, I, O] outweighs its output [B, H, W, O]
  (taps x I > B x H x W): wide layers at low resolution, where the kernel-sized work
  of XLA's gradients (a flipped, transposed copy of the kernel for the input gradient:
  110 ms for a [3, 3, 1024, 1024] one on the CPU) costs more than the arithmetic."""
  return kernel_shape[0] * kernel_shape[1] * kernel_shape[2] > (
      out_shape[0] * out_shape[1] * out_shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def valid_conv(x, kernel, stride: int):
  """An unpadded convolution in the forms that are faster on the CPU (BENCHMARKS.md,
  issue 17). Where the kernel outweighs the output (`kernel_bound`: the wide layers at
  low resolution):
  - the output is one matmul of the windows of x side by side (im2col), 1.3-2.5x
    faster than XLA's convolution there; the kernel gradient is that matmul's;
  - the input gradient is one matmul per tap against the kernel as it is, where XLA's
    first copies the kernel flipped and transposed.
  Elsewhere the convolution and its input gradient are XLA's, and the kernel gradient
  is one [O, I] matmul per tap for the fused 2x2 and 4x4 stride-2 kernels (XLA's is
  1.3-2.6x slower for them) and XLA's for 3x3 kernels (the faster there)."""
  return _valid_conv_fwd(x, kernel, stride)[0]


def _windows(x, kernel_shape, out_shape, stride):
  """x's window under each tap (t, s) of the kernel, in tap order: [B, Ho, Wo, I] each."""
  ho, wo = out_shape[1:3]
  return [x[:, t:t + stride * (ho - 1) + 1:stride, s:s + stride * (wo - 1) + 1:stride]
          for t in range(kernel_shape[0]) for s in range(kernel_shape[1])]


def _valid_conv_fwd(x, kernel, stride):
  kh, kw = kernel.shape[:2]
  out_shape = (x.shape[0], (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1)
  if not kernel_bound(kernel.shape, out_shape):
    return _conv(x, kernel, 'VALID', stride), (x, kernel, None)
  cols = jnp.concatenate(_windows(x, kernel.shape, out_shape, stride), -1)  # [B, Ho, Wo, taps I]
  return jnp.einsum('bhwc,co->bhwo', cols, kernel.reshape(-1, kernel.shape[-1])), (x, kernel, cols)


def _valid_conv_bwd(stride, residuals, dy):
  x, kernel, cols = residuals
  kh, kw = kernel.shape[:2]
  ho, wo = dy.shape[1:3]
  if cols is not None:  # kernel-bound. Output pixel (i, j) saw x[stride i + t, stride j + s]
    #   through tap (t, s): dy W[t, s]^T goes back there.
    place = lambda t, n, size: (t, size - t - stride * (n - 1) - 1, stride - 1)  # lax.pad's
    dx = sum(jax.lax.pad(jnp.einsum('bhwo,io->bhwi', dy, kernel[t, s]), jnp.zeros((), dy.dtype),
                         [(0, 0, 0), place(t, ho, x.shape[1]), place(s, wo, x.shape[2]), (0, 0, 0)])
             for t in range(kh) for s in range(kw))
    dk = jnp.einsum('bhwc,bhwo->co', cols, dy, **_f32)
  else:
    dx = (_strided_input_grad(dy, kernel, stride, x.shape) if stride > 1 else
          jax.vjp(lambda x: _conv(x, kernel, 'VALID', stride), x)[1](dy)[0])
    if (kh, kw) != (3, 3):  # each tap's [O, I]: XLA then copies each window without
      #   transposing it, 1.1-1.7x faster than as [I, O]
      dk = jnp.stack([jnp.einsum('bhwo,bhwi->oi', dy, w, **_f32)
                      for w in _windows(x, kernel.shape, dy.shape, stride)]).transpose(0, 2, 1)
    else:
      dk = jax.vjp(lambda k: _conv(x, k, 'VALID', stride), kernel)[1](dy)[0]
  dk = dk.reshape(kernel.shape)
  # Under shard_map (bn_per_device) a kernel shared by the devices gets the sum of theirs,
  # as JAX's own rule gives it.
  shared = _varying(dk) - _varying(kernel)
  if shared:
    dk = jax.lax.psum(dk, tuple(sorted(shared)))
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


def _strided_input_grad(dy, kernel, stride, x_shape):
  """The input gradient of a VALID convolution of stride s whose kernel is s taps a
  multiple along each axis (the fused 4x4, stride 2), as one stride-1 convolution of
  dy with the s x s output phases side by side, interleaved after. XLA's own (a
  convolution of dy dilated by s) is 1.2-4.4x slower on the CPU (BENCHMARKS.md).
  Along an axis, input row s m + a saw output rows m - u' through taps a + s u'
  (u' < J = taps / s): with dy padded by J - 1, a J-tap convolution whose tap u
  carries kernel tap a + s (J - 1 - u), transposed."""
  s, (kh, kw, i, o) = stride, kernel.shape
  j, l = kh // s, kw // s
  dy = jnp.pad(dy, ((0, 0), (j - 1, j - 1), (l - 1, l - 1), (0, 0)))
  w = kernel.reshape(j, s, l, s, i, o)[::-1, :, ::-1]  # [u, a, v, b, I, O]
  dz = _conv(dy, w.transpose(0, 2, 5, 1, 3, 4).reshape(j, l, o, s * s * i), 'VALID')
  b, h, w_, _ = dz.shape  # [B, H, W, (a, b, I)] -> [B, (H, a), (W, b), I]
  dx = dz.reshape(b, h, w_, s, s, i).transpose(0, 1, 3, 2, 4, 5).reshape(b, s * h, s * w_, i)
  # Rows past the last window (when (size - taps) is not a multiple of s) get nothing.
  return jnp.pad(dx, ((0, 0), (0, x_shape[1] - s * h), (0, x_shape[2] - s * w_), (0, 0)))


def _varying(x) -> frozenset:
  """The manual mesh axes over which x varies inside shard_map (none outside)."""
  manual = getattr(jax.typeof(x), 'manual_axis_type', None)
  return manual.varying if manual is not None else frozenset()


valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def _pad1(x):
  """One zero row and column on every side. Padded here, not by the convolution:
  XLA's CPU gradient of a 2x2 convolution that pads its own input is 70x slower."""
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def upsample_2x(x):  # nearest neighbour, [B, H, W, C] -> [B, 2H, 2W, C]
  return x.repeat(2, axis=1).repeat(2, axis=2)


def avg_pool_2x2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _up_taps(w, axis):
  """Along `axis` (3 taps k), output pixel 2i + p of conv3x3(upsample(x)) sees
  x[i - 1 + p + t] for the 2 taps t of a window: p = 0: x[i-1] w0 + x[i] (w1 + w2);
  p = 1: x[i] (w0 + w1) + x[i+1] w2. Returns the taps as axes p, t at `axis`."""
  w0, w1, w2 = (jnp.take(w, k, axis) for k in range(3))
  return jnp.stack([jnp.stack([w0, w1 + w2], axis), jnp.stack([w0 + w1, w2], axis)], axis)


def upsample_conv_kernel(w):
  """3x3 kernel [3, 3, I, O] -> 2x2 kernel [2, 2, I, (p, q, O)] of the 4 output phases.
  (Adds and a transpose: an einsum here lowers to a far slower dot on the CPU.)"""
  k = _up_taps(_up_taps(w, 1), 0)  # [p, t, q, s, I, O]
  return k.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, w.shape[2], 4 * w.shape[3])


def upsample_conv(x, kernel):
  """conv3x3(upsample_2x(x)) [B, 2H, 2W, O] from the 2x2 phase kernel: one 2x2
  convolution of the padded x gives [B, H+1, W+1, (p, q, O)]; phase (p, q) of
  output pixel (i, j) is at (i + p, j + q), and the phases interleave."""
  b, h, w, _ = x.shape
  y = valid_conv(_pad1(x), kernel, 1).reshape(b, h + 1, w + 1, 2, 2, -1)
  rows = [jnp.stack([y[:, p:p + h, q:q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1)  # [B, H, p, W, q, O] interleaved


def conv_avg_pool_kernel(w):
  """3x3 kernel [3, 3, I, O] -> the 4x4 kernel, stride 2, of conv3x3 then 2x2 mean.
  Along each axis, output i is the mean of conv outputs 2i and 2i + 1: a window
  x[2i - 1 .. 2i + 2] with taps [w0, w0 + w1, w1 + w2, w2] / 2."""
  for axis in (0, 1):
    pad = lambda before: [(before, 1 - before) if a == axis else (0, 0) for a in range(4)]
    w = (jnp.pad(w, pad(0)) + jnp.pad(w, pad(1))) / 2
  return w


class SNDense(_SNLayer):
  """Spectrally normalised linear layer."""

  @nn.compact
  def __call__(self, x):
    return self.add_bias(jnp.dot(x.astype(self.dtype), self.kernel((x.shape[-1], self.features))))


class SNEmbed(nn.Module):
  """Spectrally normalised class embedding (the projection D's <embed(y), h>)."""
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
    return jnp.take(table, y, axis=0).astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
  """Batch norm without affine terms, then a per-class gain and bias.

  The gain table starts at 1 and the bias table at 0; neither is spectrally
  normalised. Statistics are over the whole (global) batch when training.
  """
  num_classes: int
  momentum: float = 0.999
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, use_scale=False, use_bias=False,
                     dtype=self.dtype)(x)
    c = x.shape[-1]
    gain = self.param('gain', nn.initializers.ones, (self.num_classes, c))
    bias = self.param('bias', nn.initializers.zeros, (self.num_classes, c))
    gain = class_rows(gain, y)[:, None, None, :].astype(self.dtype)  # [B, 1, 1, C]
    bias = class_rows(bias, y)[:, None, None, :].astype(self.dtype)
    return x * gain + bias


def max_pool_2x2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


QUERY_BLOCK = 256  # queries per block of 'blocked' attention: measured in BENCHMARKS.md


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_attention(theta, phi, g, block: int):
  """`attention` for `block` queries at a time: the CPU's form (issue 17). Forward,
  one [B, block, M] array of logits at a time (lax.map), not [B, N, M], each block's
  softmax normalised after its matmul with the values (a division of [B, block, v],
  not of the weights); it keeps only the output and each query's log-sum-exp, and the
  backward recomputes a block's weights from them (as flash attention does) rather
  than storing and reloading them all. Forward and backward at 64x64: 1.7-2.1x faster
  on the CPU than the two einsums (BENCHMARKS.md). N must be a multiple of block."""
  return _blocked_attention_fwd(theta, phi, g, block)[0]


def _query_blocks(x, block):  # [B, N, ...] -> [N / block, B, block, ...]
  return x.reshape(x.shape[0], -1, block, *x.shape[2:]).swapaxes(0, 1)


def _from_query_blocks(x):  # the inverse
  return x.swapaxes(0, 1).reshape(x.shape[1], -1, *x.shape[3:])



def _blocked_attention_fwd(theta, phi, g, block):
  def one_block(queries):  # [B, block, d] -> [B, block, v], [B, block]
    logits = jnp.einsum('bnd,bmd->bnm', queries, phi, **_f32)
    top = logits.max(-1, keepdims=True)
    e = jnp.exp(logits - top)
    total = e.sum(-1, keepdims=True)
    out = jnp.einsum('bnm,bmv->bnv', e.astype(g.dtype), g, **_f32) / total
    return out.astype(g.dtype), (top + jnp.log(total))[..., 0]

  out, log_sum_exp = map(_from_query_blocks, jax.lax.map(one_block, _query_blocks(theta, block)))
  return out, (theta, phi, g, out, log_sum_exp)


def _blocked_attention_bwd(block, residuals, d_out):
  """With p = softmax(s) and out = p g: dg = p^T d_out; ds = p * (d_out g^T - delta),
  delta = rowsum(d_out * out) (softmax's Jacobian); dtheta = ds phi, dphi = ds^T theta."""
  theta, phi, g, out, log_sum_exp = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B, N]

  def one_block(carry, xs):  # sums dphi and dg over the blocks; dtheta per block
    d_phi, d_g = carry
    queries, d_out, log_sum_exp, delta = xs
    p = jnp.exp(jnp.einsum('bnd,bmd->bnm', queries, phi, **_f32) - log_sum_exp[..., None])
    d_g = d_g + jnp.einsum('bnm,bnv->bmv', p, d_out, **_f32)
    ds = p * (jnp.einsum('bnv,bmv->bnm', d_out, g, **_f32) - delta[..., None])
    d_phi = d_phi + jnp.einsum('bnm,bnd->bmd', ds, queries, **_f32)
    return (d_phi, d_g), jnp.einsum('bnm,bmd->bnd', ds, phi, **_f32)

  zeros = (jnp.zeros(phi.shape, jnp.float32), jnp.zeros(g.shape, jnp.float32))
  (d_phi, d_g), d_theta = jax.lax.scan(one_block, zeros, tuple(
      _query_blocks(x, block) for x in (theta, d_out, log_sum_exp, delta)))
  return (_from_query_blocks(d_theta).astype(theta.dtype), d_phi.astype(phi.dtype),
          d_g.astype(g.dtype))


blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


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
