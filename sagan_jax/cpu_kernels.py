"""SAGAN's convolutions (`convolve`, the one place that chooses a convolution's form) and the
CPU's forms of them and of attention, with hand-written gradients.

`layers.SNConv` (with `fused`, which config.resampling='auto' turns on only on the
CPU) and `layers.attention` ('blocked', which config.attention_impl='auto' picks only
on the CPU) use these; GPU and TPU keep XLA's forms. Each is the same linear map (or
attention) as the layer as written, up to float rounding, and exists because XLA's
CPU form is slower (BENCHMARKS_LOG.md has the measurements):
- `upsample_conv` / `conv_avg_pool_kernel`: G's upsample + conv3x3 and D's conv3x3 +
  avg-pool as one convolution at the low resolution (4/9 of the multiply-adds);
- `valid_conv`: an unpadded convolution whose forms are faster on the CPU: im2col for
  kernel-bound layers, per-tap kernel gradients, and the strided input gradient by
  output phases;
- `blocked_attention`: a block of queries at a time with a flash-style backward.
Tests: tests/test_layers.py checks each against XLA's form, values and gradients.
"""
import functools

import jax
import jax.numpy as jnp

_f32 = dict(preferred_element_type=jnp.float32)  # matmuls that accumulate in float32


def conv(x, kernel, padding, stride=1):
  """XLA's NHWC convolution."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


FUSED_MIN_SIZE = 8  # the fused forms are slower at 4x4, faster from 8x8 (BENCHMARKS_LOG.md)


def convolve(x, w, sigma, resample: str = '', fused: bool = False):
  """SNConv's convolution: x (in its compute dtype) with w / sigma (w [k, k, I, O] and sigma
  float32), stride 1, SAME padding, the input upsampled 2x before ('up') or the output
  average-pooled 2x2 after ('down'). As written, or with `fused` in the CPU's forms:
  - the resampling and the 3x3 convolution as one convolution at the low resolution
    (`upsample_conv`, `conv_avg_pool_kernel`: 4/9 of the multiply-adds) where that is at
    least FUSED_MIN_SIZE (below it the work in the larger kernel outweighs the saving);
  - a `kernel_bound` 3x3 convolution through `valid_conv`, 1/sigma scaling its output
    rather than its kernel where the kernel outweighs the output (passes over the smaller
    of the two, forward and in the gradient)."""
  dtype, k = x.dtype, w.shape[0]
  out = {'up': 2 * x.shape[1], 'down': x.shape[1] // 2}.get(resample, x.shape[1])
  low = x.shape[1] if resample == 'up' else x.shape[1] // 2  # the low resolution
  fuse = fused and k == 3 and resample != '' and low >= FUSED_MIN_SIZE
  fused_up = fuse and resample == 'up'
  if resample == 'up' and not fuse:
    x = upsample_2x(x)
  by_valid_conv = fuse or (fused and k == 3 and kernel_bound(w.shape, x.shape))
  if by_valid_conv and not fused_up:  # upsample_conv pads its input itself
    x = pad1(x)
  on_output = by_valid_conv and kernel_bound(w.shape, (x.shape[0], out, out))
  w = w if on_output else w / sigma  # float32: the fused kernels are made before the cast
  if fused_up:
    y = upsample_conv(x, upsample_conv_kernel(w).astype(dtype))
  elif fuse:
    y = valid_conv(x, conv_avg_pool_kernel(w).astype(dtype), 2)
  elif by_valid_conv:
    y = valid_conv(x, w.astype(dtype), 1)
  else:
    y = conv(x, w.astype(dtype), 'SAME')
  y = avg_pool_2x2(y) if resample == 'down' and not fuse else y
  return (y / sigma).astype(dtype) if on_output else y


def upsample_2x(x):  # nearest neighbour, [B, H, W, C] -> [B, 2H, 2W, C]
  return x.repeat(2, axis=1).repeat(2, axis=2)


def avg_pool_2x2(x):  # [B, H, W, C] -> [B, H/2, W/2, C]
  window = (1, 2, 2, 1)  # (a literal 0. and lax.add: XLA's windowed sum, with its gradient)
  return jax.lax.reduce_window(x, 0., jax.lax.add, window, window, 'VALID') / 4


def kernel_bound(kernel_shape, out_shape) -> bool:
  """Whether a convolution's kernel [kh, kw, I, O] outweighs its output [B, H, W, O]
  (taps x I > B x H x W): wide layers at low resolution, where the kernel-sized work
  of XLA's gradients (a flipped, transposed copy of the kernel for the input gradient)
  costs more than the arithmetic."""
  return kernel_shape[0] * kernel_shape[1] * kernel_shape[2] > (
      out_shape[0] * out_shape[1] * out_shape[2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def valid_conv(x, kernel, stride: int):
  """An unpadded convolution in the forms that are faster on the CPU. Where the kernel
  outweighs the output (`kernel_bound`: the wide layers at
  low resolution):
  - the output is one matmul of the windows of x side by side (im2col), faster than
    XLA's convolution there; the kernel gradient is that matmul's;
  - the input gradient is one matmul per tap against the kernel as it is, where XLA's
    first copies the kernel flipped and transposed.
  Elsewhere the convolution and its input gradient are XLA's, and the kernel gradient
  is one [O, I] matmul per tap for the fused 2x2 and 4x4 stride-2 kernels (XLA's is
  slower for them) and XLA's for 3x3 kernels (the faster there)."""
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
    return conv(x, kernel, 'VALID', stride), (x, kernel, None)
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
          jax.vjp(lambda x: conv(x, kernel, 'VALID', stride), x)[1](dy)[0])
    if (kh, kw) != (3, 3):  # each tap's [O, I]: XLA then copies each window without
      #   transposing it, faster than as [I, O]
      dk = jnp.stack([jnp.einsum('bhwo,bhwi->oi', dy, w, **_f32)
                      for w in _windows(x, kernel.shape, dy.shape, stride)]).transpose(0, 2, 1)
    else:
      dk = jax.vjp(lambda k: conv(x, k, 'VALID', stride), kernel)[1](dy)[0]
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
  convolution of dy dilated by s) is slower on the CPU.
  Along an axis, input row s m + a saw output rows m - u' through taps a + s u'
  (u' < J = taps / s): with dy padded by J - 1, a J-tap convolution whose tap u
  carries kernel tap a + s (J - 1 - u), transposed."""
  s, (kh, kw, i, o) = stride, kernel.shape
  j, l = kh // s, kw // s
  dy = jnp.pad(dy, ((0, 0), (j - 1, j - 1), (l - 1, l - 1), (0, 0)))
  w = kernel.reshape(j, s, l, s, i, o)[::-1, :, ::-1]  # [u, a, v, b, I, O]
  dz = conv(dy, w.transpose(0, 2, 5, 1, 3, 4).reshape(j, l, o, s * s * i), 'VALID')
  b, h, w_, _ = dz.shape  # [B, H, W, (a, b, I)] -> [B, (H, a), (W, b), I]
  dx = dz.reshape(b, h, w_, s, s, i).transpose(0, 1, 3, 2, 4, 5).reshape(b, s * h, s * w_, i)
  # Rows past the last window (when (size - taps) is not a multiple of s) get nothing.
  return jnp.pad(dx, ((0, 0), (0, x_shape[1] - s * h), (0, x_shape[2] - s * w_), (0, 0)))


def _varying(x) -> frozenset:
  """The manual mesh axes over which x varies inside shard_map (none outside)."""
  manual = getattr(jax.typeof(x), 'manual_axis_type', None)
  return manual.varying if manual is not None else frozenset()


valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def pad1(x):
  """One zero row and column on every side. Padded here, not by the convolution:
  XLA's CPU gradient of a 2x2 convolution that pads its own input is 70x slower."""
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


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
  y = valid_conv(pad1(x), kernel, 1).reshape(b, h + 1, w + 1, 2, 2, -1)
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


QUERY_BLOCK = 256  # queries per block of 'blocked' attention (the fastest in BENCHMARKS_LOG.md)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_attention(theta, phi, g, block: int):
  """`attention` for `block` queries at a time: the CPU's form. Forward,
  one [B, block, M] array of logits at a time (lax.map), not [B, N, M], each block's
  softmax normalised after its matmul with the values (a division of [B, block, v],
  not of the weights); it keeps only the output and each query's log-sum-exp, and the
  backward recomputes a block's weights from them (as flash attention does) rather
  than storing and reloading them all: on the CPU, faster than the two einsums at 64x64.
  N must be a multiple of block."""
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
