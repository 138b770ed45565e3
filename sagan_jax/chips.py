"""Cloud TPU slices by the names they are sold under (v5e-256, v4-8, ...): their
compile-only devices, built by the TPU compiler (libtpu) on any machine without a TPU,
and each chip's published figures. A leaf module."""
import dataclasses
import importlib.util
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: how its slices are named and built, and its published figures."""
  name: str  # as in the sale names: 'v5e'
  topology: str  # get_topology_desc's generation: 'v5e', 'v5' (v5p), ...
  chip_config: str  # 'megacore': one device per chip of two TensorCores
  cores_per_chip: int  # the sale name counts TensorCores: v4-8 is 4 chips
  dims: int  # 2-D or 3-D torus
  hbm: int  # bytes per chip
  bf16_flops: float  # peak dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  source: str  # where the three figures are published


CHIPS = {
    'v4': Chip('v4', 'v4', 'megacore', 2, 3, 32 * GIB, 275e12, 1200e9,
               'https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16, 32 GiB HBM2, 1200 GBps)'),
    'v5e': Chip('v5e', 'v5e', 'default', 1, 2, 16 * GIB, 197e12, 819e9,
                'https://cloud.google.com/tpu/docs/v5e (197 TFLOPs bf16, 16 GB HBM2, 819 GBps)'),
    'v5p': Chip('v5p', 'v5', 'megacore', 2, 3, 95 * GIB, 459e12, 2765e9,
                'https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16, 95 GB HBM2e, 2765 GBps)'),
    'v6e': Chip('v6e', 'v6e', 'default', 1, 2, 32 * GIB, 918e12, 1640e9,
                'https://cloud.google.com/tpu/docs/v6e (918 TFLOPs bf16, 32 GB HBM, 1640 GBps)'),
}
ALIASES = {'v5litepod': 'v5e'}
# Chips -> the slice's shape, as Cloud TPU builds them (its docs' topology tables).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
             256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}


class SliceError(ValueError):
  """A slice name that is not sold, or no TPU compiler to build it with."""


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str  # 'v5e-256'
  chip: Chip
  shape: tuple[int, ...]  # chips along each axis of one slice
  num_slices: int = 1

  @property
  def chips(self) -> int:
    n = 1
    for d in self.shape:
      n *= d
    return n * self.num_slices

  def describe(self) -> str:
    shape = 'x'.join(map(str, self.shape))
    slices = f' x {self.num_slices} slices over DCN' if self.num_slices > 1 else ''
    return f'{self.name} ({self.chips} {self.chip.name} chips, {shape}{slices})'


def parse(name: str, num_slices: int = 1) -> Slice:
  """'v5e-256' (also 'v5litepod-256'), 'v4-8', 'v5p-128', 'v6e-8' -> Slice; SliceError
  naming the names it knows otherwise."""
  known = ', '.join(f'{c}-N' for c in CHIPS) + ' (and v5litepod-N)'
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', name.strip().lower())
  generation = match and ALIASES.get(match[1], match[1])
  if not match or generation not in CHIPS:
    raise SliceError(f'--topology={name!r} is not a Cloud TPU slice name; give one of {known}, '
                     'e.g. --topology=v5e-16')
  chip, cores = CHIPS[generation], int(match[2])
  shapes = SHAPES_3D if chip.dims == 3 else SHAPES_2D
  chips, rest = divmod(cores, chip.cores_per_chip)
  if rest or chips not in shapes:
    sizes = ', '.join(f'{chip.name}-{n * chip.cores_per_chip}' for n in shapes)
    raise SliceError(f'--topology={name!r}: {chip.name} slices come as {sizes}')
  if num_slices < 1:
    raise SliceError(f'--num_slices={num_slices}: give 1 or more')
  return Slice(name, chip, shapes[chips], num_slices)


def check_compiler() -> None:
  """SliceError, before anything is compiled, where libtpu is not installed."""
  if importlib.util.find_spec('libtpu') is None:
    raise SliceError('compiling for a TPU needs the TPU compiler, which is not installed: '
                     'pip install -r requirements-tpu.txt')


def devices(tpu_slice: Slice) -> list:
  """The slice's compile-only devices (jax.Device objects of platform 'tpu' with their
  process_index per host, and slice_index over several slices), from the TPU compiler.
  Hosts hold 4 chips (2x2), or the whole slice where it is one host of at most 8."""
  check_compiler()
  # Only compiling: no metadata server to ask; libtpu's start-up warnings about the host it
  # would run on are quieted by naming one (the compile does not use them); and several
  # processes may load libtpu at once (its lock file is for processes that own real chips).
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', tpu_slice.name)
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  from jax.experimental import topologies
  shape = tpu_slice.shape
  if tpu_slice.chip.dims == 2:
    per_host = (shape[0], shape[1], 1) if tpu_slice.chips // tpu_slice.num_slices <= 8 else (
        2, 2, 1)
    wrap = (shape == (16, 16),) * 2 + (False,)  # the full pod is a torus
  else:
    per_host = (2, 2, 1)
    wrap = tuple(d >= 4 for d in shape)
  shape3 = shape + (1,) * (3 - len(shape))
  description = topologies.get_topology_desc(
      f'{tpu_slice.chip.topology}:{"x".join(map(str, shape))}', 'tpu',
      num_slices=tpu_slice.num_slices, chip_config_name=tpu_slice.chip.chip_config,
      chips_per_host_bounds=tuple(min(p, s) for p, s in zip(per_host, shape3)), wrap=wrap)
  return list(description.devices)
