"""Which form of a layer runs on which chip: the device policy, decided for a target
platform (this host's devices when training, a TPU slice's compile-only devices when
compiling for it elsewhere), never from the host alone. A leaf module."""
import jax

from sagan_jax.architectures import attention_multipliers

PLATFORMS = ('cpu', 'nvidia_gpu', 'gpu', 'tpu')  # 'gpu': one of another maker


def platform_of(device=None) -> str:
  """The platform of `device` (default: this process's first device), one of PLATFORMS."""
  device = device or jax.devices()[0]
  if device.platform in ('gpu', 'cuda', 'rocm'):
    return 'nvidia_gpu' if device.device_kind.startswith('NVIDIA') else 'gpu'
  return device.platform


def attention_implementation(config, platform: str) -> str:
  """The attention path for `config.attention_impl` on `platform`, resolving 'auto':
  cuDNN where its flash kernel runs on every NVIDIA generation (bf16, values at most 128
  wide and a multiple of 8), 'blocked' on the CPU (the CPU kernels' form), else XLA's."""
  if config.attention_impl != 'auto':
    return config.attention_impl
  if not config.attention_resolution:
    return 'xla'
  if platform == 'cpu':
    return 'blocked'
  widths = attention_multipliers(config.image_size, config.attention_resolution)
  values = [m * config.ch // (2 if config.attention == 'sagan' else 1) for m in widths]
  fits = all(v <= 128 and v % 8 == 0 for v in values)
  return 'cudnn' if platform == 'nvidia_gpu' and config.dtype == 'bfloat16' and fits else 'xla'


def fused_resampling(config, platform: str) -> bool:
  """Whether resampling convolutions take the CPU kernels' fused forms
  (`config.resampling`, 'auto' resolved for `platform`: on the CPU, where they were
  measured faster)."""
  return config.resampling == 'fused' or (config.resampling == 'auto' and platform == 'cpu')


def cudnn_attention_allowed(config, platform: str) -> bool:
  """cuDNN's attention needs an NVIDIA GPU and bf16."""
  return platform == 'nvidia_gpu' and config.dtype == 'bfloat16'
