"""The compiled train step on the tiny config over 8 simulated devices."""
import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import sampling, train, train_state
from sagan_jax import update as update_module
from sagan_jax.update import Update


def host(tree):
  return jax.tree.map(lambda x: np.array(x, np.float64), jax.device_get(tree))


def power_iteration(u, w):
  """One step of the paper's power iteration, in float64."""
  w = w.reshape(-1, w.shape[-1])
  v = u @ w.T
  v /= np.linalg.norm(v)
  u = v @ w
  return u / np.linalg.norm(u)


def iterate_all(spectral, params, times=1):
  """Applies `times` power iterations to every u with its layer's weight."""
  def one(path, u):
    layer = params
    for key in path[:-1]:
      layer = layer[key.key]
    w = layer.get('kernel', layer.get('embedding'))
    for _ in range(times):
      u = power_iteration(u, w)
    return u
  return jax.tree_util.tree_map_with_path(one, spectral)


def assert_tree_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def max_distance(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_step_has_finite_losses_and_changes_both_nets(tiny):
  state = tiny.new_state()
  before = host(state)
  # Two steps: with gamma at 0 the attention convs get no gradient until gamma moves.
  state, metrics = tiny.train_step(state, tiny.batch())
  state, metrics = tiny.train_step(state, tiny.batch(1))
  metrics = jax.device_get(metrics)
  assert {'d_loss', 'g_loss', 'd_real', 'd_fake', 'gamma/G/attention',
          'gamma/D/attention'} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  after = host(state)
  assert int(after.step) == 2
  for net in ('g_params', 'd_params'):
    changed = jax.tree.map(lambda x, y: bool(np.any(x != y)), getattr(before, net),
                           getattr(after, net))
    unchanged = [jax.tree_util.keystr(p) for p, c in
                 jax.tree_util.tree_flatten_with_path(changed)[0] if not c]
    assert not unchanged, f'{net} not updated: {unchanged}'
  assert float(metrics['gamma/G/attention']) != 0.0  # gamma starts at 0 and learns


def test_spectral_state_advances_once_per_d_step(tiny):
  """D's u: one power iteration per D step (two here), none in the G step; G's u: one."""
  assert tiny.config.num_d_steps == 2
  d_step = jax.jit(lambda *a: update_module.d_step(tiny.update, *a))
  g_step = jax.jit(lambda *a: update_module.g_step(tiny.update, *a))
  state, batch = tiny.new_state(), tiny.batch(1)
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  s0 = host(state)
  state1, _ = d_step(state, batch['image'][0], batch['label'][0], keys[0])
  s1 = host(state1)
  assert_tree_close(s1.d_spectral, iterate_all(s0.d_spectral, s0.d_params), rtol=1e-5, atol=1e-6)
  assert_tree_close(s1.g_spectral, s0.g_spectral, rtol=0, atol=0)  # G's state untouched in D steps
  assert_tree_close(s1.g_batch_stats, s0.g_batch_stats, rtol=0, atol=0)
  state2, _ = d_step(state1, batch['image'][1], batch['label'][1], keys[1])
  s2 = host(state2)
  assert_tree_close(s2.d_spectral, iterate_all(s1.d_spectral, s1.d_params), rtol=1e-5, atol=1e-6)
  state3, _ = g_step(state2, keys[2])
  s3 = host(state3)
  assert_tree_close(s3.d_spectral, s2.d_spectral, rtol=0, atol=0)  # G step leaves D's u alone
  assert_tree_close(s3.g_spectral, iterate_all(s2.g_spectral, s2.g_params), rtol=1e-5, atol=1e-6)

  # The compiled step runs exactly these parts: its D u is two iterations on,
  # not one or three (early iterations move a random u a lot).
  full = host(tiny.train_step(tiny.new_state(), batch)[0])
  assert max_distance(full.d_spectral, s2.d_spectral) < 1e-3
  assert max_distance(full.d_spectral, s1.d_spectral) > 1e-2
  assert max_distance(full.d_spectral, iterate_all(s2.d_spectral, s2.d_params)) > 1e-2
  assert max_distance(full.g_spectral, s3.g_spectral) < 1e-3
  assert max_distance(full.g_spectral, s0.g_spectral) > 1e-2


def test_ema_copies_then_follows_its_formula(tiny):
  c = tiny.config
  assert c.ema_start_step == 1
  state, _ = tiny.train_step(tiny.new_state(), tiny.batch(2))
  s1 = host(state)  # step 0 < ema_start_step: the EMA is a copy
  assert_tree_close(s1.ema_params, s1.g_params, rtol=0, atol=0)
  state, _ = tiny.train_step(state, tiny.batch(3))
  s2 = host(state)  # ema = decay * ema + (1 - decay) * params
  expected = jax.tree.map(lambda e, p: c.ema_decay * e + (1 - c.ema_decay) * p,
                          s1.ema_params, s2.g_params)
  assert_tree_close(s2.ema_params, expected, rtol=1e-6, atol=1e-7)
  assert max_distance(s2.ema_params, s2.g_params) > 0  # and no longer a copy


def test_ema_generator_has_batch_statistics_of_its_own_weights(tiny):
  c = tiny.config.copy_and_resolve_references()
  c.ema_bn_batches = 1
  ema_statistics = train.EMAStatistics(c, tiny.generator, tiny.mesh)
  state, _ = tiny.train_step(tiny.new_state(), tiny.batch(2))
  # After step 0 (< ema_start_step) the EMA is a copy: the EMA G is the raw weights measured on the
  # EMA's batch, so it equals the raw G given those statistics.
  copy = ema_statistics(state)
  ema = train_state.generator_variables(copy, ema=True)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed + 2), 1), 0)
  z, y = sampling.random_batch(key, c.batch_size, c)  # the one batch it was measured on
  raw = train_state.generator_variables(copy, ema=False)
  _, measured = tiny.generator.clone(bn_momentum=0.0).apply(raw, z, y, train=True,
                                                            mutable=['batch_stats'])
  assert_tree_close(ema['batch_stats'], measured['batch_stats'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tiny.generator.apply(ema, z, y, train=False),
                             tiny.generator.apply(dict(raw, **measured), z, y, train=False),
                             atol=1e-5)
  # Later the EMA weights differ from the raw ones, and so do their statistics: those of
  # its own batches (inference with them on that batch is training mode on it), not the
  # raw G's moving averages.
  state, _ = tiny.train_step(copy, tiny.batch(3))
  state, _ = tiny.train_step(state, tiny.batch(4))
  state = ema_statistics(state)
  assert int(state.step) == 3
  ema, raw = (train_state.generator_variables(state, True),
              train_state.generator_variables(state, False))
  assert max_distance(host(ema['params']), host(raw['params'])) > 1e-4
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed + 2), 3), 0)
  z, y = sampling.random_batch(key, c.batch_size, c)
  trained, _ = tiny.generator.apply(ema, z, y, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(tiny.generator.apply(ema, z, y, train=False), trained, atol=2e-5)
  assert max_distance(host(ema['batch_stats']), host(raw['batch_stats'])) > 1e-2
  assert ema_statistics(state) is state  # measured once per step


def test_many_steps_compile_once(tiny):
  state = tiny.new_state()
  for seed in range(3):
    state, metrics = tiny.train_step(state, tiny.batch(seed))
  jax.block_until_ready(metrics)
  assert int(state.step) == 3
  assert tiny.train_step._cache_size() == 1


def test_adam_is_ttur_with_beta1_zero(tiny):
  g_tx, d_tx = tiny.update.g_tx, tiny.update.d_tx
  grads = {'w': np.ones(3, np.float32)}
  for tx, lr in ((g_tx, tiny.config.g_lr), (d_tx, tiny.config.d_lr)):
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates['w'], -lr, rtol=1e-4)  # Adam's first step: -lr * sign


def test_every_call_advances_u_at_every_training_forward_and_bn_averages_in_the_g_step(tiny):
  """state_updates='every_call' (StudioGAN's PyTorch modules): a D step runs D on the
  reals, then on the fakes (u advancing twice) and G once in training mode (its u
  advances; its BN averages do not: StudioGAN stops their tracking for the D step); the G
  step advances G's u and D's u once, and moves G's BN averages once, by its batch."""
  config = tiny.config.copy_and_resolve_references()
  config.update(state_updates='every_call', bn_momentum=0.5)  # a second move would show
  update = Update(config, tiny.generator.clone(bn_momentum=0.5), tiny.discriminator, tiny.mesh)
  d_step = jax.jit(lambda *a: update_module.d_step(update, *a))
  g_step = jax.jit(lambda *a: update_module.g_step(update, *a))
  state, batch = update.initial_state(0), tiny.batch(1)
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 2)
  s0 = host(state)
  state1, _ = d_step(state, batch['image'][0], batch['label'][0], keys[0])
  s1 = host(state1)
  assert_tree_close(s1.d_spectral, iterate_all(s0.d_spectral, s0.d_params, 2), rtol=1e-4,
                    atol=1e-5)
  assert max_distance(s1.d_spectral, iterate_all(s0.d_spectral, s0.d_params, 1)) > 1e-2
  assert_tree_close(s1.g_spectral, iterate_all(s0.g_spectral, s0.g_params), rtol=1e-5, atol=1e-6)
  assert max_distance(s1.g_batch_stats, s0.g_batch_stats) == 0
  state2, _ = g_step(state1, keys[1])
  s2 = host(state2)
  assert_tree_close(s2.d_spectral, iterate_all(s1.d_spectral, s1.d_params), rtol=1e-4, atol=1e-5)
  assert_tree_close(s2.g_spectral, iterate_all(s1.g_spectral, s1.g_params), rtol=1e-5, atol=1e-6)
  # The averages after the iteration are those of the G step's forward alone: G's own
  # statistics of the G step's latents, moved into the averages once.
  z, y = jax.jit(update.latents, static_argnums=1)(keys[1], config.batch_size)
  _, alone = jax.jit(lambda s, z, y: update.generate(s, s.g_params, z, y,
                                                     ['batch_stats', 'spectral']))(state1, z, y)
  assert_tree_close(s2.g_batch_stats, host(alone['batch_stats']), rtol=1e-5, atol=1e-6)


def test_every_call_with_accumulation_advances_u_at_every_micro_batch(tiny):
  """With K = 2 micro-batches, D's u advances at each of their two D calls: 4 times."""
  config = tiny.config.copy_and_resolve_references()
  config.update(state_updates='every_call', grad_accumulation=2, batch_size=16)
  update = Update(config, tiny.generator, tiny.discriminator, tiny.mesh)
  state = update.initial_state(0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 4, (16,), np.int32))
  new, metrics = jax.jit(lambda *a: update_module.d_step(update, *a))(
      state, images, labels, jax.random.PRNGKey(3))
  s0, s1 = host(state), host(new)
  assert_tree_close(s1.d_spectral, iterate_all(s0.d_spectral, s0.d_params, 4), rtol=1e-4,
                    atol=1e-5)
  assert_tree_close(s1.g_spectral, iterate_all(s0.g_spectral, s0.g_params, 2), rtol=1e-4,
                    atol=1e-5)
  assert np.isfinite(float(metrics['d_loss']))
