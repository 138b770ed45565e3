"""The device mesh: a leaf module, so that every part can build it without the training code."""
import os

import jax


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process).
  Over several TPU slices (devices with a `slice_index`), each slice's devices lie
  together, so that the gradients' all-reduce runs within each slice over its
  interconnect and only one reduction per slice crosses the data-centre network."""
  devices = jax.devices() if devices is None else devices
  auto = (jax.sharding.AxisType.Auto,)
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if slices > 1:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_hybrid_device_mesh((len(devices) // slices,), (slices,), devices)
    return jax.sharding.Mesh(grid, ('data',), axis_types=auto)
  return jax.make_mesh((len(devices),), ('data',), axis_types=auto, devices=devices)


def cpu_device_count(per_process_batch: int, cores: int) -> int:
  """The most CPU devices, at most one per core, that split the batch evenly."""
  return max(n for n in range(1, min(cores, per_process_batch) + 1) if per_process_batch % n == 0)


def use_cpu_cores(per_process_batch: int, cores: int | None = None) -> int:
  """Gives the CPU backend one device per core, as many as divide `per_process_batch`,
  and returns that count (1: left alone).

  XLA runs a small step's ops mostly on one thread; as several devices the data-parallel
  step runs on all cores at once (BENCHMARKS_LOG.md, "CPU devices"), with the same results up
  to float rounding. Call it before
  the backend starts. It leaves a count the user chose (JAX_NUM_CPU_DEVICES, XLA_FLAGS'
  --xla_force_host_platform_device_count) alone, and it changes nothing on GPU or TPU,
  where the CPU devices go unused.
  """
  if (jax.config.jax_num_cpu_devices != -1
      or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')):
    return 1
  count = cpu_device_count(per_process_batch, cores or os.cpu_count() or 1)
  if count > 1:
    jax.config.update('jax_num_cpu_devices', count)
  return count


def global_array(x, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """A jax.Array of `sharding` from a host array that every process holds in full (each
  process puts only its devices' parts): jit refuses numpy arguments whose sharding
  spans several processes."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def wait_for_every_process(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process of the run reaches `name` (each name once per run): a
  barrier of JAX's coordination service, not a collective. XLA's CPU collectives (Gloo)
  give a process 30 s to join the first collective, and one process preparing a dataset
  or compiling on busy cores can lag the others by more: they then fail with 'Gloo
  context initialization failed'."""
  if jax.process_count() > 1:
    from jax._src import distributed  # (the client; Orbax's barriers reach it the same way)
    distributed.global_state.client.wait_at_barrier(f'sagan_jax_{name}', timeout_s * 1000)


def abstract(tree, mesh: jax.sharding.Mesh):
  """ShapeDtypeStructs of `tree`'s leaves, replicated on `mesh`."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)
