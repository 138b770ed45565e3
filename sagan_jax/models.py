"""SAGAN generator and projection discriminator (NHWC).

Widths are `ch` times the multipliers in ARCHITECTURES. G starts at 4x4 and
doubles the resolution in every block; D halves it in every block marked
`True` and ends at 4x4 (8x8 at 32 px), as in BigGAN-PyTorch's tables.
"""
import functools
from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from sagan_jax import device_policy
from sagan_jax.architectures import ARCHITECTURES
from sagan_jax.cpu_kernels import avg_pool_2x2, upsample_2x
from sagan_jax.layers import ConditionalBatchNorm, SelfAttention, SNConv, SNDense, SNEmbed

INITIALIZERS = {'xavier': nn.initializers.xavier_uniform(), 'orthogonal': nn.initializers.orthogonal()}


class GBlock(nn.Module):
  """CBN -> ReLU -> up -> conv3x3 -> CBN -> ReLU -> conv3x3, plus up -> conv1x1.

  The shortcut's 1x1 conv runs before the upsampling: the same values (every
  output pixel is the same dot product) at a quarter of the cost.
  """
  features: int
  conv: Callable[..., nn.Module]
  cbn: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, y, train: bool):
    h = nn.relu(self.cbn(name='cbn1')(x, y, train))
    h = self.conv(self.features, resample='up', name='conv1')(h)
    h = nn.relu(self.cbn(name='cbn2')(h, y, train))
    h = self.conv(self.features, name='conv2')(h)
    return h + upsample_2x(self.conv(self.features, kernel_size=1, name='shortcut')(x))


class DBlock(nn.Module):
  """[ReLU] -> conv3x3 -> ReLU -> conv3x3 -> [avg-pool], plus a shortcut.

  The first block (`preactivation=False`) is the 'optimised' block that takes
  the image. The 1x1 shortcut conv exists when the width changes or the block
  down-samples; it is applied after the pooling, which is the same linear map
  as pooling after it at a quarter of the cost. `shortcut_relu`: the shortcut
  of a preactivation block takes ReLU(x), not x (StudioGAN's in-place ReLU does
  that).
  """
  features: int
  conv: Callable[..., nn.Module]
  downsample: bool
  preactivation: bool
  shortcut_relu: bool = False

  @nn.compact
  def __call__(self, x):
    h = nn.relu(x) if self.preactivation else x
    x = h if self.shortcut_relu else x
    h = self.conv(self.features, name='conv1')(h)
    resample = 'down' if self.downsample else ''
    h = self.conv(self.features, resample=resample, name='conv2')(nn.relu(h))
    shortcut = avg_pool_2x2(x) if self.downsample else x
    if self.downsample or x.shape[-1] != self.features:
      shortcut = self.conv(self.features, kernel_size=1, name='shortcut')(shortcut)
    return h + shortcut


class _Network(nn.Module):
  """Fields shared by G and D."""
  image_size: int
  num_classes: int
  ch: int = 64
  attention_resolution: int = 64  # 0: no attention
  attention: str = 'sagan'
  attention_impl: str = 'xla'  # 'xla', 'blocked' or 'cudnn'
  fused_resampling: bool = False  # SNConv's `fused`
  initializer: str = 'xavier'
  sn_steps: int = 1
  sn_eps: float = 1e-12
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each residual block's and the attention's activations in
  #   the backward pass (the attention's [B, N, N/4] weights are the largest at 64x64)


class Generator(_Network):
  """z [B, z_dim], class y [B] -> image [B, S, S, 3] in [-1, 1]."""
  bn_momentum: float = 0.999
  bn_eps: float = 1e-5
  cbn: str = 'tables'  # ConditionalBatchNorm's gain_bias

  @nn.compact
  def __call__(self, z, y, train: bool):
    widths = [self.ch * m for m in ARCHITECTURES[self.image_size][0]]
    sn = dict(n_steps=self.sn_steps, eps=self.sn_eps, dtype=self.dtype)
    conv = functools.partial(SNConv, kernel_init=INITIALIZERS[self.initializer],
                             fused=self.fused_resampling, **sn)
    cbn = functools.partial(ConditionalBatchNorm, self.num_classes, self.bn_momentum,
                            self.bn_eps, self.dtype, self.cbn, INITIALIZERS[self.initializer],
                            self.sn_steps, self.sn_eps)
    h = SNDense(4 * 4 * widths[0], kernel_init=INITIALIZERS[self.initializer], name='linear', **sn)(z)
    h = h.reshape(-1, 4, 4, widths[0])
    block = nn.remat(GBlock, static_argnums=(3,)) if self.remat else GBlock  # (self, x, y, train)
    attention = nn.remat(SelfAttention) if self.remat else SelfAttention
    for i, width in enumerate(widths[1:]):
      h = block(width, conv, cbn, name=f'block{i + 1}')(h, y, train)
      if h.shape[1] == self.attention_resolution:
        h = attention(conv, self.attention, self.attention_impl, name='attention')(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_eps, dtype=self.dtype, name='bn')(h)
    h = conv(3, name='conv_out')(nn.relu(h))
    return jnp.tanh(h.astype(jnp.float32))


class Discriminator(_Network):
  """Projection discriminator: image [B, S, S, 3], class y [B] -> logit [B]."""
  shortcut_relu: bool = False  # DBlock's

  @nn.compact
  def __call__(self, x, y):
    sn = dict(n_steps=self.sn_steps, eps=self.sn_eps, dtype=self.dtype)
    init = INITIALIZERS[self.initializer]
    conv = functools.partial(SNConv, kernel_init=init, fused=self.fused_resampling, **sn)
    h = x
    block = nn.remat(DBlock) if self.remat else DBlock
    attention = nn.remat(SelfAttention) if self.remat else SelfAttention
    for i, (mult, down) in enumerate(ARCHITECTURES[self.image_size][1]):
      h = block(self.ch * mult, conv, down, preactivation=i > 0,
                 shortcut_relu=self.shortcut_relu, name=f'block{i + 1}')(h)
      if down and h.shape[1] == self.attention_resolution:
        h = attention(conv, self.attention, self.attention_impl, name='attention')(h)
    # The head runs in float32: a bf16 sum over H*W positions would lose precision.
    h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))  # global sum pool, [B, C]
    head = dict(sn, dtype=jnp.float32)
    out = SNDense(1, kernel_init=init, name='linear', **head)(h)[:, 0]
    embed = SNEmbed(self.num_classes, h.shape[-1], embedding_init=init, name='embed', **head)(y)
    return out + jnp.sum(embed * h, axis=-1)


def make_models(config, platform: str = '') -> tuple[Generator, Discriminator]:
  """G and D of `config` in the forms for `platform` (device_policy; '': this host's)."""
  platform = platform or device_policy.platform_of()
  common = dict(attention_impl=device_policy.attention_implementation(config, platform),
                fused_resampling=device_policy.fused_resampling(config, platform),
                image_size=config.image_size, num_classes=config.num_classes, ch=config.ch,
                dtype=jnp.dtype(config.dtype), attention_resolution=config.attention_resolution,
                attention=config.attention, initializer=config.init,
                sn_steps=config.sn_power_iterations, sn_eps=config.sn_eps, remat=config.remat)
  return (Generator(bn_momentum=config.bn_momentum, bn_eps=config.bn_eps, cbn=config.cbn,
                    **common),
          Discriminator(shortcut_relu=config.d_shortcut_relu, **common))
