"""The memory a compiled train step needs on one device, and what fits: one rule for the
check before training (train.py), the compile mode (aot.py) and the benchmarks.

A step's memory per device is a line in its per-device micro-batch m = batch_size /
(devices x grad_accumulation): the state, the batch and the code, plus activations and
gradients that grow with m. The line comes from two compiles; an answer read off it is
then confirmed by compiling it, so nothing advised here is a guess.
"""
import dataclasses
import math
import re
import time

import jax
from absl import logging

from sagan_jax.config import ConfigError

GIB = 2**30


def gib(n: float) -> str:
  return f'{n / GIB:.2f} GiB' if n >= GIB else f'{n / 2**20:.1f} MiB'


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device of a compiled program (XLA's memory_analysis). `rejected`: the
  compiler itself refused it for want of memory (a TPU's does), and these are the
  figures its error gave."""
  arguments: int = 0  # the state and the batch
  outputs: int = 0
  temporaries: int = 0  # activations and gradients
  code: int = 0
  aliased: int = 0  # outputs written over donated arguments
  rejected: bool = False

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs + self.temporaries + self.code - self.aliased

  def fits(self, limit: int | None) -> bool:
    return not self.rejected and (limit is None or self.peak <= limit)

  def verdict(self, limit: int | None) -> str:
    return ('refused by the compiler' if self.rejected else
            'fits' if self.fits(limit) else 'does not fit')

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'peak': self.peak}


def of(compiled) -> Memory:
  m = compiled.memory_analysis()
  return Memory(m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
                m.generated_code_size_in_bytes, m.alias_size_in_bytes)


def compile_step(update) -> tuple:
  """(update.py's train step compiled for its mesh, its Memory per device); where the
  compiler itself refuses the step for want of memory (a TPU's does), (None, what its
  error says the step needs)."""
  try:
    compiled = update.compiled()
    return compiled, of(compiled)
  except jax.errors.JaxRuntimeError as e:
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    arguments = nbytes(update.state_shapes()) + nbytes(update.batch_shapes()) // update.mesh.size
    needed = from_error(e, arguments)
    if needed is None:
      raise
    return None, needed


_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
# The TPU compiler's two ways of refusing a program that does not fit its HBM.
_USED = re.compile(r'Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm')
_TEMPORARIES = re.compile(r'HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM')


def from_error(error: Exception, arguments: int) -> Memory | None:
  """The memory that a compiler's out-of-memory error says a program needs (None: the
  error is another one). `arguments`: the program's argument bytes per device, for an
  error that gives only the temporaries."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text:
    return None
  size = lambda value, unit: int(float(value) * _UNITS[unit])
  if used := _USED.search(text):
    total = size(*used.groups()[:2])
    return Memory(arguments=arguments, temporaries=max(total - arguments, 0), rejected=True)
  if temporaries := _TEMPORARIES.search(text):
    return Memory(arguments=arguments, temporaries=size(*temporaries.groups()), rejected=True)
  return None


def device_memory_limit() -> int | None:
  """What one local device can hold (bytes), where the backend says (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get('bytes_limit') if stats else None


@dataclasses.dataclass(frozen=True)
class Line:
  """peak(m) = fixed + per_example * m, through two measured points (m, peak)."""
  fixed: float
  per_example: float

  @classmethod
  def through(cls, a: tuple[int, int], b: tuple[int, int]) -> 'Line':
    (m1, p1), (m2, p2) = sorted([a, b])
    slope = (p2 - p1) / (m2 - m1) if m2 != m1 else 0.0
    return cls(p1 - slope * m1, slope)

  def largest(self, limit: int) -> int:
    """The largest m whose peak the line puts under `limit` (0: none)."""
    if self.per_example <= 0:
      return 0 if self.fixed > limit else 1 << 30
    return max(int(math.floor((limit - self.fixed) / self.per_example)), 0)


def _measured(measure, config, limit: int | None, what: str) -> Memory:
  """measure(config), logged as it comes: a compile for a large slice or batch takes
  minutes on a CPU, and a search makes several."""
  start = time.perf_counter()
  m = measure(config)
  logging.info('  %s: %s per device, %s (%.0f s of compiling)', what, gib(m.peak),
               m.verdict(limit), time.perf_counter() - start)
  return m


def _with(config, **overrides):
  new = config.copy_and_resolve_references()
  new.unlock()
  new.update(overrides)
  return new


class MemoryFitError(ConfigError):
  """The compiled step needs more memory than the device has; `advice`: [(flag, Memory)]
  of the settings found to fit."""

  def __init__(self, message: str, advice=()):
    super().__init__(message)
    self.advice = list(advice)


def check(memory: Memory, config, num_devices: int, limit: int | None, measure=None) -> Memory:
  """Logs the step's memory per device; raises MemoryFitError when it exceeds `limit`
  (None: unknown, as on the CPU: only logged), naming the settings that fit: each one
  compiled by `measure` (config -> Memory, the step of that config) and found under the
  limit (with no `measure`, none is named)."""
  logging.info("The train step needs %s per device (XLA's estimate: %s of state and batch, %s "
               'of activations and gradients)%s.', gib(memory.peak), gib(memory.arguments),
               gib(memory.temporaries),
               f'; the device has {gib(limit)}' if limit else '; the device gives no limit')
  if memory.fits(limit):
    return memory
  if limit is None:  # refused by the compiler of a device that states no limit
    limit = memory.peak - 1
  logging.info('The step does not fit: compiling other settings to find what does.')
  fitting = what_fits(memory, config, num_devices, limit, measure)
  advice = [f'{flag} (about {gib(m.peak)})' for flag, m in fitting]
  raise MemoryFitError(
      f'the train step needs {gib(memory.peak)} per device at batch_size={config.batch_size} '
      f'and the device has {gib(limit)}: '
      + (f'{", or ".join(advice)} fit' if advice else
         'try --config.grad_accumulation=K, --config.remat=True, --config.dtype=bfloat16 or a '
         'smaller --config.batch_size' if measure is None else
         'no grad_accumulation, remat or bfloat16 fits: try a smaller --config.batch_size')
      + '; nothing was trained', fitting)


def what_fits(memory: Memory, config, num_devices: int, limit: int, measure) -> list:
  """[(flag, Memory)] of the settings that fit `limit`, each compiled: the smallest
  grad_accumulation K that fits (read off the line through this step and the step at a
  micro-batch of one, then confirmed), remat, and bfloat16. (The largest batch that fits
  is --mode=compile --max_batch's: a smaller batch changes the recipe.)"""
  if measure is None:
    return []
  out = []
  per_device = config.batch_size // num_devices
  k0 = config.grad_accumulation
  ks = [k for k in range(k0 + 1, per_device + 1) if per_device % k == 0 and k % k0 == 0]
  at = lambda flag, **overrides: _measured(measure, _with(config, **overrides), limit, flag)
  if ks:
    smallest = at(f'--config.grad_accumulation={ks[-1]}', grad_accumulation=ks[-1])
    line = Line.through((per_device // k0, memory.peak), (1, smallest.peak))
    tried = {ks[-1]: smallest}
    for k in [k for k in ks if per_device // k <= line.largest(limit)][:2]:
      m = tried.get(k) or at(f'--config.grad_accumulation={k}', grad_accumulation=k)
      if m.fits(limit):
        out.append((f'--config.grad_accumulation={k}', m))
        break
  for flag, overrides in (('--config.remat=True', dict(remat=True)),
                          ('--config.dtype=bfloat16', dict(dtype='bfloat16'))):
    if not all(config[k] == v for k, v in overrides.items()):
      m = at(flag, **overrides)
      if m.fits(limit):
        out.append((flag, m))
  return out


def largest_batch(config, num_devices: int, limit: int, measure,
                  known: dict[int, Memory] | None = None) -> dict:
  """The largest global batch (a multiple of num_devices x grad_accumulation) whose step
  fits `limit` per device, by compiling: the line through the steps at a micro-batch of
  one and of eight per device (or `known`: {batch per device: Memory} already measured,
  such as the config's own), then the batch it gives, compiled; where that fits, the line
  through the two largest that fit gives the next (growing at least half as fast as the
  first); where it does not, the line through it and the largest that fits (at most 4
  compiles more).
  With the state replicated and the batch split, a device's memory depends only on its
  share of the batch."""
  k = config.grad_accumulation
  at = lambda b: _measured(measure, _with(config, batch_size=b * num_devices), limit,
                          f'batch {b * num_devices} ({b} per device)')
  points = dict(known or {})
  for b in (k, 8 * k):
    if len(points) < 2 and b not in points:
      points[b] = at(b)
  # Where a line crosses the limit; a flat one (two compiles at one peak) says nothing of
  # the growth: then twice the largest batch compiled.
  crossing = lambda line: line.largest(limit) if line.per_example > 0 else 2 * max(points)
  line = Line.through(*((b, m.peak) for b, m in sorted(points.items())[:2]))
  b = crossing(line) // k * k
  for _ in range(4):  # at most 4 compiles more
    if b < k or b in points:
      break
    points[b] = at(b)
    low = max((x for x, m in points.items() if m.fits(limit)), default=None)
    high = min((x for x, m in points.items() if not m.fits(limit) and (low is None or x > low)),
               default=None)
    if high is None:
      # It fits: on along the line through the two largest that fit (a first line that
      # overestimates the activations' growth stops short of the limit). Near the limit
      # XLA's schedule can flatten the curve for a stretch and steepen it again beyond:
      # a step along the flattened line overshoots to a program many times the memory (a
      # whole compile spent), so the growth taken is at least half the first line's.
      top = sorted(x for x, m in points.items() if m.fits(limit))[-2:]
      up = Line.through(*((x, points[x].peak) for x in top)) if len(top) == 2 else line
      growth = max(up.per_example, line.per_example / 2)
      b = crossing(Line(points[low].peak - growth * low, growth))
      if b <= low:
        break
    elif low is None:  # nothing fits yet: down along the line
      b = (high - max(math.ceil((points[high].peak - limit) / max(line.per_example, 1)), k))
    else:
      # Between the largest that fits and the smallest that does not: where the line
      # through those two compiles crosses the limit (activations need not grow with the
      # batch at one slope from a micro-batch of one).
      between = Line.through((low, points[low].peak), (high, points[high].peak))
      b = min(between.largest(limit), high - k)
      if b <= low:
        break
    b = b // k * k
  fitting = [b for b, m in points.items() if m.fits(limit)]
  best = max(fitting, default=0)
  above = min((b for b, m in points.items() if b > best and not m.fits(limit)), default=None)
  return {
      'per_device': best, 'global': best * num_devices, 'limit': limit,
      'peak': points[best].peak if best else None,
      'fixed': int(line.fixed), 'per_example': int(line.per_example),
      'compiled': {b: m.peak for b, m in sorted(points.items())},
      'limited_by': (f'HBM: {gib(line.fixed)} that does not grow with the batch (state, '
                     f'code) and {gib(line.per_example)} of activations per image per device'
                     + (f'; {above} per device did not fit' if above else '')),
  }
