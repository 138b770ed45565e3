"""Data parallelism: 1 vs 8 devices, two processes, bf16."""
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import sampling, train, train_state
from sagan_jax.config import ConfigError, validate
from sagan_jax.models import make_models
from sagan_jax.update import Update
from processes import run_workers
from tiny_config import tiny_config


def _run(config, mesh, generator, discriminator, batches, initial):
  """Trains from `initial` (a state on the host: runs to compare start from the same
  one, compiled once) on `batches`: (the state on the host, the metrics per step)."""
  update = Update(config, generator, discriminator, mesh)
  state, step = jax.device_put(initial, NamedSharding(mesh, P())), update.jitted()
  history = []
  for batch in batches:
    state, metrics = step(state, train.shard_batch(batch, mesh))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.num_d_steps, config.batch_size)
  return [{'image': rng.integers(0, 256, shape + (32, 32, 3), np.uint8),
           'label': rng.integers(0, config.num_classes, shape, np.int32)} for _ in range(n)]


def _assert_same_run(one, eight, config, steps):
  """The metrics and the state of two runs of `steps` steps agree up to float32 round-off
  in a different reduction order."""
  for m1, m8 in zip(one[1], eight[1]):
    for key in m1:
      np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-5, err_msg=key)
  # Adam (beta1 = 0) steps a parameter by up to lr * sqrt((1 - b2^t) / (1 - b2)) whatever
  # its gradient, so a gradient of round-off size may step either way.
  b2 = config.adam_b2
  adam_bound = sum(np.sqrt((1 - b2**t) / (1 - b2)) for t in range(1, steps + 1))
  for net in ('g_params', 'd_params', 'ema_params', 'g_spectral', 'd_spectral', 'g_batch_stats'):
    lr = config.d_lr if net == 'd_params' else config.g_lr
    flat_one = jax.tree_util.tree_flatten_with_path(getattr(one[0], net))[0]
    for (path, a), b in zip(flat_one, jax.tree.leaves(getattr(eight[0], net))):
      name = f'{net} {jax.tree_util.keystr(path)}'
      if not net.endswith('params'):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        continue
      np.testing.assert_array_less(np.abs(a - b), 2 * adam_bound * lr * 1.01, err_msg=name)
      if name.startswith(('g_params [\'block', 'ema_params [\'block')) and name.endswith(
          "['bias']"):
        continue  # G's conv biases before a batch norm: their true gradient is zero
      # Elsewhere round-off decides the sign of a gradient only here and there.
      off = ~np.isclose(a, b, rtol=1e-4, atol=1e-5)
      assert off.mean() <= 0.01, (name, int(off.sum()), off.size)


def test_one_device_and_eight_devices_train_the_same(tiny):
  assert len(tiny.mesh.devices.flat) == 8
  batches, initial = _batches(tiny.config, 3), jax.device_get(tiny.new_state())
  one = _run(tiny.config, train.make_mesh(jax.devices()[:1]), tiny.generator,
             tiny.discriminator, batches, initial)
  eight = _run(tiny.config, tiny.mesh, tiny.generator, tiny.discriminator, batches, initial)
  _assert_same_run(one, eight, tiny.config, len(batches))


def test_every_call_on_one_and_eight_devices_takes_the_same_step(tiny):
  """state_updates='every_call': D on the reals, then on the fakes, G in the D step, and
  the G step through D's u moved by D's new weights, each device on its part of the batch.
  One step, as from there on Adam (beta1 = 0) makes any round-off grow in this mode:
  a start perturbed by 1e-7 on one device, or 1 vs 2 devices, differ by ~1e-3 in the
  gradients' norms after two steps (BENCHMARKS_LOG.md)."""
  config = tiny_config(state_updates='every_call')
  batches, initial = _batches(config, 1), jax.device_get(tiny.new_state())
  one = _run(config, train.make_mesh(jax.devices()[:1]), tiny.generator, tiny.discriminator,
             batches, initial)
  eight = _run(config, tiny.mesh, tiny.generator, tiny.discriminator, batches, initial)
  _assert_same_run(one, eight, config, len(batches))


def test_two_processes_keep_identical_replicated_state():
  """2 processes x 2 CPU devices on localhost (jax.distributed, gloo), 3 real steps, each
  with its gradients accumulated over 2 micro-batches (config.grad_accumulation)."""
  outputs = run_workers('helpers/multiprocess_worker.py', 2, 2, 2)
  assert [o['devices'] for o in outputs] == [4, 4]
  assert outputs[0]['digest'] == outputs[1]['digest']
  assert outputs[0]['metrics'] == outputs[1]['metrics']
  assert all(np.isfinite(v) for v in outputs[0]['metrics'].values())


def test_bfloat16_trains_and_stays_close_to_float32(tiny):
  config = tiny_config(dtype='bfloat16')
  batches, initial = _batches(config, 2, seed=5), jax.device_get(tiny.new_state())
  state16, history16 = _run(config, tiny.mesh, *make_models(config), batches, initial)
  state32, history32 = _run(tiny.config, tiny.mesh, tiny.generator, tiny.discriminator, batches,
                            initial)
  for leaf in jax.tree.leaves(state16):
    assert leaf.dtype != np.dtype('bfloat16')  # parameters and all state stay float32
  for m16, m32 in zip(history16, history32):
    assert all(np.isfinite(v) for v in m16.values())
    # bf16 keeps 8 bits of mantissa (relative error ~4e-3 per rounding); through
    # ~15 layers the logits move by about 1e-2 of their scale, so compare the
    # losses to 5e-2 of a unit-sized quantity.
    for key in ('d_loss', 'g_loss', 'd_real', 'd_fake'):
      np.testing.assert_allclose(m16[key], m32[key], rtol=5e-2, atol=5e-2, err_msg=key)


def test_batch_must_divide_over_devices_and_processes():
  with pytest.raises(ConfigError, match=r'config.batch_size=12 .* device count \(8\)'):
    validate(tiny_config(batch_size=12), num_devices=8)
  with pytest.raises(ConfigError, match=r'config.batch_size=6 .* process count \(4\)'):
    validate(tiny_config(batch_size=6), num_devices=2, num_processes=4)


def test_per_device_batch_norm_uses_each_devices_statistics(tiny):
  config = tiny_config(bn_per_device=True)
  state = tiny.new_state()
  variables = train_state.generator_variables(state, ema=False)
  z = jax.random.normal(jax.random.PRNGKey(3), (8, config.z_dim))
  y = np.arange(8, dtype=np.int32) % config.num_classes
  forward = jax.jit(lambda v, z, y: sampling.generator_forward(
      config, tiny.generator, tiny.mesh, v, z, y, mutable=['batch_stats']))
  images, new = forward(variables, z, y)
  # Reference: each device's part (one example) through G on its own.
  alone = jax.jit(lambda v, z, y: tiny.generator.apply(v, z, y, train=True,
                                                       mutable=['batch_stats']))
  parts = [alone(variables, z[i:i + 1], y[i:i + 1]) for i in range(8)]
  np.testing.assert_allclose(images, np.concatenate([p[0] for p in parts]), rtol=1e-4, atol=1e-5)
  mean_stats = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *[p[1]['batch_stats'] for p in parts])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(new['batch_stats']), mean_stats)
  global_images, _ = alone(variables, z, y)  # global statistics give other images
  assert np.abs(np.asarray(global_images) - np.asarray(images)).max() > 1e-2
  # And the whole step trains with it.
  step = Update(config, tiny.generator, tiny.discriminator, tiny.mesh).jitted()
  _, metrics = step(state, tiny.batch())
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())


def test_cpu_devices_one_per_core_that_split_the_batch():
  from sagan_jax.mesh import cpu_device_count, use_cpu_cores
  assert cpu_device_count(32, 2) == 2 and cpu_device_count(32, 16) == 16
  assert cpu_device_count(32, 3) == 2 and cpu_device_count(30, 4) == 3
  assert cpu_device_count(7, 4) == 1 and cpu_device_count(2, 8) == 2
  # A count the user chose (here the tests' XLA_FLAGS) is left alone.
  assert use_cpu_cores(32, cores=2) == 1 and jax.device_count() == 8


def test_a_failing_or_silent_worker_ends_the_others_at_once(tmp_path):
  """run_workers: process 0 fails at once while process 1 would wait a minute (as at a
  collective): it is ended, and the failure names process 0 and its last words."""
  script = tmp_path / 'worker.py'
  script.write_text('import sys, time\nif sys.argv[2] == "0":\n  sys.exit("boom")\n'
                    'time.sleep(60)\n')
  start = time.monotonic()
  with pytest.raises(AssertionError, match=r'process 0 of 2 failed:\s+boom'):
    run_workers(str(script), 2, 1)
  silent = tmp_path / 'silent.py'
  silent.write_text('import time\ntime.sleep(60)\n')
  with pytest.raises(AssertionError, match=r'process 0 of 2 gave no result in 2 s'):
    run_workers(str(silent), 2, 1, timeout=2)
  assert time.monotonic() - start < 30
