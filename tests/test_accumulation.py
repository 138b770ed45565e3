"""Gradient accumulation, rematerialisation and the memory check (the paper's batch on
smaller accelerators)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import checkpoint, input_pipeline, memory, train
from sagan_jax.models import make_models
from sagan_jax.losses import discriminator_loss, generator_loss
from sagan_jax.memory import MemoryFitError
from sagan_jax.update import Update, d_gradients, g_gradients, make_update
from test_parallel import _batches, _run
from test_train import assert_tree_close, host, iterate_all


@pytest.fixture(scope='module')
def accumulating(tiny):
  """The tiny config with K = 2 micro-batches of 4, on the 8 devices... of which each
  micro-batch needs one row per device: batch 16."""
  config = tiny.config.copy_and_resolve_references()
  config.update(grad_accumulation=2, batch_size=16, num_d_steps=1)
  return config, Update(config, tiny.generator, tiny.discriminator, tiny.mesh)


def _halves(x, k=2):  # the micro-batches of accumulation.micro_batches: rows j, k + j, ...
  return [x[j::k] for j in range(k)]


def test_d_gradient_is_the_mean_over_micro_batches_and_u_advances_once(tiny, accumulating):
  config, update = accumulating
  state = update.initial_state(0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 4, (16,), np.int32))
  z, y_fake = jax.random.normal(jax.random.PRNGKey(1), (16, config.z_dim)), labels[::-1]
  grads, _, (spectral, _), _ = jax.jit(lambda *a: d_gradients(update, *a))(
      state, images, labels, z, y_fake)
  # u: one power iteration, before the first micro-batch.
  s0 = host(state)
  assert_tree_close(host(spectral), iterate_all(s0.d_spectral, s0.d_params), rtol=1e-5, atol=1e-6)
  # Each half's fakes, generated from its own z with its own BN statistics. (Compiled:
  # op by op, the references compile hundreds of small programs.)
  generate = jax.jit(lambda s, zh, yh: update.generate(s, s.g_params, zh, yh,
                                                       mutable=['batch_stats'])[0])
  fakes = [generate(state, zh, yh) for zh, yh in zip(_halves(z), _halves(y_fake))]
  def d_loss(params, spectral, images, labels, fake, y_fake):
    real = images.astype(jnp.float32) / 127.5 - 1.0
    d_real, d_fake, _ = update.discriminate(params, spectral, real, labels, fake, y_fake)
    return discriminator_loss(config.loss, d_real, d_fake)

  d_grad = jax.jit(lambda params, spectral, im, lab, fake, yf: jax.grad(d_loss)(
      params, spectral, im, lab, fake, yf))
  grad = lambda *batch: d_grad(state.d_params, spectral, *batch)
  per_half = [grad(*h, f, yf) for h, f, yf in zip(zip(_halves(images), _halves(labels)), fakes,
                                                  _halves(y_fake))]
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *per_half)
  assert_tree_close(host(grads), host(mean), rtol=1e-4, atol=1e-6)
  # D has no batch norm: with those fakes the mean is the whole batch's gradient.
  whole = grad(jnp.concatenate(_halves(images)), jnp.concatenate(_halves(labels)),
               jnp.concatenate(fakes), jnp.concatenate(_halves(y_fake)))
  assert_tree_close(host(grads), host(whole), rtol=1e-4, atol=1e-6)


def test_g_gradient_is_the_mean_over_micro_batches_with_their_own_statistics(tiny, accumulating):
  config, update = accumulating
  state = update.initial_state(0)
  z = jax.random.normal(jax.random.PRNGKey(2), (16, config.z_dim))
  y = jnp.arange(16) % 4
  grads, _, (g_spectral, _), outputs = jax.jit(lambda *a: g_gradients(update, *a))(state, z, y)
  batch_stats = outputs['batch_stats']
  s0 = host(state)
  assert_tree_close(host(g_spectral), iterate_all(s0.g_spectral, s0.g_params), rtol=1e-5,
                    atol=1e-6)
  with_u = state.replace(g_spectral=g_spectral)
  d_vars = {'params': state.d_params, 'spectral': state.d_spectral}

  @jax.jit
  def half(state, d_vars, zh, yh):
    def loss(p):
      fake, new = update.generate(state, p, zh, yh, mutable=['batch_stats'])
      return generator_loss(config.loss, update.discriminator.apply(d_vars, fake, yh)), new
    return jax.grad(loss, has_aux=True)(state.g_params)

  (g0, new0), (g1, new1) = (half(with_u, d_vars, zh, yh) for zh, yh in zip(_halves(z),
                                                                            _halves(y)))
  # (atol: the conv biases before a batch norm have gradients of round-off, ~1e-7.)
  assert_tree_close(host(grads), host(jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)), rtol=1e-4,
                    atol=1e-5)
  # The BN averages move once, by the mean of the two micro-batches' statistics.
  assert_tree_close(host(batch_stats), host(jax.tree.map(
      lambda a, b: (a + b) / 2, new0['batch_stats'], new1['batch_stats'])), rtol=1e-5, atol=1e-7)


def test_accumulation_steps_once_and_one_device_equals_eight(tiny, accumulating):
  config, _ = accumulating
  batches, initial = _batches(config, 2), jax.device_get(tiny.new_state())
  one = _run(config, train.make_mesh(jax.devices()[:1]), tiny.generator, tiny.discriminator,
             batches, initial)
  eight = _run(config, tiny.mesh, tiny.generator, tiny.discriminator, batches, initial)
  assert int(eight[0].step) == 2
  for m1, m8 in zip(one[1], eight[1]):
    for key in m1:
      np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-5, err_msg=key)
  for net in ('d_params', 'd_spectral', 'g_spectral', 'g_batch_stats'):
    assert_tree_close(getattr(one[0], net), getattr(eight[0], net), rtol=1e-4, atol=1e-5)


def test_remat_gives_the_same_step_in_less_memory(tiny):
  config = tiny.config.copy_and_resolve_references()
  config.remat = True
  results = {}
  for remat, update in ((False, tiny.update), (True, Update(config, *make_models(config),
                                                             tiny.mesh))):
    state = tiny.new_state()  # the same state: remat changes no parameter
    compiled = update.compiled()
    batch = train.shard_batch(_batches(config, 1)[0], tiny.mesh)
    new, metrics = compiled(state, batch)
    results[remat] = (memory.of(compiled), host(new), jax.device_get(metrics))
  (m0, s0, l0), (m1, s1, l1) = results[False], results[True]
  for key in ('d_loss', 'g_loss', 'd_grad_norm', 'g_grad_norm'):
    np.testing.assert_allclose(l1[key], l0[key], rtol=1e-5, err_msg=key)
  # Adam's first step (beta1 = 0) is +-lr for any nonzero gradient, so a gradient of
  # round-off size may step either way: all but a few parameters agree exactly.
  for net in ('d_params', 'g_params'):
    a, b = (np.concatenate([x.ravel() for x in jax.tree.leaves(getattr(s, net))]) for s in (s1, s0))
    assert np.mean(np.abs(a - b) > 1e-6) < 0.01, net
  assert m1.temporaries < m0.temporaries, (m0, m1)


def test_the_memory_check_stops_what_cannot_fit_in_one_line(tiny):
  config = tiny.config
  step = memory.of(tiny.update.compiled())
  devices = tiny.mesh.size
  assert memory.check(step, config, devices, None) == step  # the CPU: no limit
  assert memory.check(step, config, devices, step.peak) == step  # just fits
  with pytest.raises(MemoryFitError) as error:
    memory.check(step, config, devices, step.peak - 1)  # nothing to compile others with
  message = str(error.value)
  assert '\n' not in message and 'MiB per device' in message
  for fix in ('--config.remat=True', '--config.dtype=bfloat16', 'smaller --config.batch_size'):
    assert fix in message


def test_a_run_that_cannot_fit_stops_before_training_and_resumes_under_another_k(
    runs, tfds_dir, tmp_path, monkeypatch):
  """The 4 straight steps of the `runs` fixture (K = 1), resumed for 2 more with K = 2:
  the state does not depend on K. And the same resume, on a device too small for the
  step, stops before training with the memory check's message, its checkpoints kept."""
  import shutil
  from tiny_config import shapes_config
  workdir = str(tmp_path / 'run')
  shutil.copytree(runs[0], workdir)
  config = shapes_config(tfds_dir, num_train_steps=6, checkpoint_every_steps=2,
                         grad_accumulation=2, batch_size=16)
  monkeypatch.setattr(memory, 'device_memory_limit', lambda: 1024)
  with pytest.raises(MemoryFitError, match='nothing was trained'):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert sorted(n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()) == [
      '2', '4']
  before = str(tmp_path / 'before')
  shutil.copytree(workdir, before)
  resumed = host(train.train_and_evaluate(config, workdir))
  # The resume is checkpoint 4's state and data position, then two steps of the K = 2
  # update: the same two steps taken here from a copy of the workdir as it was.
  mesh = train.make_mesh()
  update = make_update(config, mesh)
  data = input_pipeline.create_train_iterator(config, mesh)
  manager = checkpoint.make_manager(before, config)
  state = checkpoint.restore_for_training(manager, config, update.state_shapes(), data)
  manager.close()
  assert int(state.step) == 4
  step = update.compiled()
  for _ in range(2):
    state, _ = step(state, train.shard_batch(next(data), mesh))
  data.close()
  assert int(resumed.step) == 6
  for part in ('d_params', 'g_params', 'd_spectral', 'g_spectral', 'g_batch_stats',
               'ema_params'):
    assert_tree_close(getattr(resumed, part), getattr(host(state), part), rtol=1e-6, atol=1e-7)
