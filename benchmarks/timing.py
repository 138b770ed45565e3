"""What the benchmarks share: device-synchronised timing, a matmul's peak FLOP/s, and a
synthetic batch for the train step."""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax.mesh import global_array


def timed(f, *args, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of f(*args), after one untimed call,
  device-synchronised."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return times


def matmul_peak(dtype, n: int, repeats: int = 10) -> float:
  """FLOP/s of an n x n matmul on the first device: the fastest of `repeats`."""
  a = jnp.ones((n, n), dtype)
  return 2 * n**3 / min(timed(jax.jit(lambda x: x @ x), a, repeats=repeats))


def synthetic_batch(config, mesh, seed: int = 0) -> dict:
  """A uniformly random uint8 batch [num_d_steps, B, S, S, 3] and its labels, split on the
  B axis of `mesh` (every process draws the same, and puts its devices' parts)."""
  rng = np.random.default_rng(seed)
  shape = (config.num_d_steps, config.batch_size)
  batch = {'image': rng.integers(0, 256, shape + (config.image_size,) * 2 + (3,), np.uint8),
           'label': rng.integers(0, config.num_classes, shape, np.int32)}
  return jax.tree.map(lambda x: global_array(x, NamedSharding(mesh, P(None, 'data'))), batch)


def time_steps(step, state, batch, steps: int, warmup: int = 2):
  """Seconds of each of `steps` train steps (state donated and carried from one to the
  next), after `warmup` untimed ones. -> (the last state and metrics, the times)."""
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, metrics, times
