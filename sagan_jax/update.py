"""The SAGAN update: num_d_steps D steps, then one G step, two Adam learning rates (TTUR).

The GAN maths are the functions `train_step`, `d_step` and `g_step` (each with its loss and
its gradient accumulation); `Update` holds what they run with (config, networks, mesh,
optimisers), makes the state and compiles the step. TensorFlow-free:
benchmarks/accelerator_check.py runs it on machines without TensorFlow or TFDS.

When the state of spectral norm (u) and G's batch-norm averages move, `config.state_updates`:
- 'once' (the authors' code): D's u once per D step, before it; G's u once per G step,
  before it; real and fake through D in one call; G's BN averages in the G step.
- 'every_call' (StudioGAN's PyTorch modules): u moves at every training-mode forward of its
  network (D on the reals, then on the fakes, then in the G step; G in the D step and in
  the G step); G's BN averages move only in the G step (StudioGAN stops their tracking
  for the D step).
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import memory, sampling
from sagan_jax.accumulation import mean_gradient
from sagan_jax.layers import advance_spectral
from sagan_jax.losses import discriminator_loss, generator_loss
from sagan_jax.mesh import abstract
from sagan_jax.models import make_models
from sagan_jax.monitoring import attention_gammas, finite_and_norm, sigma_summary
from sagan_jax.train_state import TrainState, generator_variables


# The GAN maths

def train_step(up: 'Update', state: TrainState, batch) -> tuple[TrainState, dict]:
  """num_d_steps D steps (each on its real batch [num_d_steps, B, ...]), then one G step.
  A step whose losses or gradients are not all finite changes nothing but the step and
  the counters `skipped` and `streak`; once `streak` reaches config.max_nonfinite_steps
  every later step is skipped too (the training loop stops the run when it sees that)."""
  c = up.config
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), c.num_d_steps + 1)
  new, finite = state, []
  for i in range(c.num_d_steps):
    new, d_metrics = d_step(up, new, batch['image'][i], batch['label'][i], keys[i])
    finite.append(d_metrics.pop('finite'))
  new, g_metrics = g_step(up, new, keys[-1])
  finite.append(g_metrics.pop('finite'))
  # Our own guard rather than optax.apply_if_finite: spectral, BN and EMA state must be
  # held back too, not only the parameters. lax.cond picks whole buffers (a jnp.where
  # per leaf is a pass over every one of them).
  ok = jnp.all(jnp.stack(finite)) & (state.streak < c.max_nonfinite_steps)
  new = jax.lax.cond(ok, lambda: new, lambda: state)
  new = new.replace(step=state.step + 1, skipped=state.skipped + (~ok).astype(jnp.int32),
                    streak=jnp.where(ok, 0, state.streak + 1))
  return new, {**d_metrics, **g_metrics, **attention_gammas(new), **sigma_summary(new),
               'skipped_steps': new.skipped}


def d_step(up: 'Update', state: TrainState, images, labels, key) -> tuple[TrainState, dict]:
  """One D update: hinge loss (config.loss) on uint8 reals and fakes of fresh latents."""
  z, y_fake = up.latents(key, images.shape[0])
  grads, loss, spectral, means = d_gradients(up, state, images, labels, z, y_fake)
  updates, opt_state = up.d_tx.update(grads, state.d_opt_state, state.d_params)
  state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                        d_opt_state=opt_state, d_spectral=spectral[0], g_spectral=spectral[1])
  finite, norm = finite_and_norm(loss, grads)
  return state, {'d_loss': loss, **means, 'd_grad_norm': norm, 'finite': finite}


def d_gradients(up: 'Update', state: TrainState, images, labels, z, y_fake):
  """D's loss and its gradient (the mean over config.grad_accumulation micro-batches).
  -> (grads, loss, (D's u, G's u), {'d_real', 'd_fake'} means)."""
  every_call = up.config.state_updates == 'every_call'
  d_spectral = state.d_spectral if every_call else up.advance_u(state.d_params, state.d_spectral)

  def loss_fn(d_params, spectral, micro):
    images, labels, z, y_fake = micro
    d_spectral, g_spectral = spectral
    # G in training mode (batch statistics); its BN averages stay as they are.
    fake, g_new = up.generate(state.replace(g_spectral=g_spectral), state.g_params, z, y_fake,
                              mutable=['batch_stats', 'spectral'] if every_call else ['batch_stats'])
    real = images.astype(jnp.float32) / 127.5 - 1.0
    d_real, d_fake, d_spectral = up.discriminate(d_params, d_spectral, real, labels,
                                                 jax.lax.stop_gradient(fake), y_fake)
    loss = discriminator_loss(up.config.loss, d_real, d_fake)
    return loss, ((d_spectral, g_new.get('spectral', g_spectral)),
                  {'d_real': d_real.mean(), 'd_fake': d_fake.mean()})

  return mean_gradient(loss_fn, state.d_params, (d_spectral, state.g_spectral),
                       (images, labels, z, y_fake), up.config.grad_accumulation, up.mesh)


def g_step(up: 'Update', state: TrainState, key) -> tuple[TrainState, dict]:
  """One G update through D (held fixed): the generator's side of config.loss; then the
  EMA of G's weights (a copy of them before config.ema_start_step)."""
  c = up.config
  z, y = up.latents(key, c.batch_size)
  grads, loss, (g_spectral, d_spectral), means = g_gradients(up, state, z, y)
  updates, opt_state = up.g_tx.update(grads, state.g_opt_state, state.g_params)
  params = optax.apply_updates(state.g_params, updates)
  # ema <- decay * ema + (1 - decay) * params from ema_start_step on, a copy before
  # (weights 0 and 1: one pass over the parameters, not an average and a select).
  use_ema = state.step >= c.ema_start_step
  old_w, new_w = jnp.where(use_ema, c.ema_decay, 0.0), jnp.where(use_ema, 1.0 - c.ema_decay, 1.0)
  ema = jax.tree.map(lambda e, p: old_w * e + new_w * p, state.ema_params, params)
  state = state.replace(g_params=params, g_opt_state=opt_state, ema_params=ema,
                        g_batch_stats=means['batch_stats'], g_spectral=g_spectral,
                        d_spectral=d_spectral)
  finite, norm = finite_and_norm(loss, grads)
  return state, {'g_loss': loss, 'g_grad_norm': norm, 'finite': finite}


def g_gradients(up: 'Update', state: TrainState, z, y):
  """G's loss and its gradient (the mean over config.grad_accumulation micro-batches,
  each normalised by its own batch statistics; the BN averages move once, by the mean of
  theirs). -> (grads, loss, (G's u, D's u), {'batch_stats': the new BN averages})."""
  every_call = up.config.state_updates == 'every_call'
  g_spectral = state.g_spectral if every_call else up.advance_u(state.g_params, state.g_spectral)

  def loss_fn(g_params, spectral, micro):
    z, y = micro
    g_spectral, d_spectral = spectral
    fake, new = up.generate(state.replace(g_spectral=g_spectral), g_params, z, y,
                            mutable=['batch_stats', 'spectral'] if every_call else ['batch_stats'])
    d_fake, d_new = up.discriminator.apply(
        {'params': state.d_params, 'spectral': d_spectral}, fake, y,
        mutable=['spectral'] if every_call else [])
    return generator_loss(up.config.loss, d_fake), (
        (new.get('spectral', g_spectral), d_new.get('spectral', d_spectral)),
        {'batch_stats': new['batch_stats']})

  return mean_gradient(loss_fn, state.g_params, (g_spectral, state.d_spectral), (z, y),
                       up.config.grad_accumulation, up.mesh)


class Update:
  """What the update runs with: a config, G and D, the mesh, and the two Adam optimisers
  (TTUR), built here and nowhere else, so the state it initialises and the steps it takes
  agree. Calling it is `train_step`; it also makes the state and compiles the step."""

  def __init__(self, config, generator, discriminator, mesh):
    self.config, self.generator, self.discriminator, self.mesh = (config, generator,
                                                                  discriminator, mesh)
    adam = lambda lr: optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    self.g_tx, self.d_tx = adam(config.g_lr), adam(config.d_lr)

  def _new_state(self, rng) -> TrainState:
    c = self.config
    rng, g_key, d_key = jax.random.split(rng, 3)
    y = jnp.zeros((1,), jnp.int32)
    g_vars = self.generator.init(g_key, jnp.zeros((1, c.z_dim)), y, train=False)
    d_vars = self.discriminator.init(d_key, jnp.zeros((1, c.image_size, c.image_size, 3)), y)
    return TrainState(
        step=jnp.zeros((), jnp.int32), rng=rng,
        g_params=g_vars['params'], g_batch_stats=g_vars['batch_stats'],
        g_spectral=g_vars['spectral'], g_opt_state=self.g_tx.init(g_vars['params']),
        ema_params=jax.tree.map(jnp.copy, g_vars['params']),
        ema_batch_stats=jax.tree.map(jnp.copy, g_vars['batch_stats']),
        d_params=d_vars['params'], d_spectral=d_vars['spectral'],
        d_opt_state=self.d_tx.init(d_vars['params']),
        skipped=jnp.zeros((), jnp.int32), streak=jnp.zeros((), jnp.int32))

  @functools.cached_property
  def _init(self):
    return jax.jit(self._new_state, out_shardings=NamedSharding(self.mesh, P()))

  def initial_state(self, seed: int) -> TrainState:
    """The initial state, created directly replicated on the mesh (compiled once)."""
    return self._init(jax.random.PRNGKey(seed))

  def state_shapes(self) -> TrainState:
    """The state as ShapeDtypeStructs replicated on the mesh, computing nothing (for a
    restore, and to compile the step ahead of time)."""
    return abstract(jax.eval_shape(self._new_state, jax.random.PRNGKey(0)), self.mesh)

  def batch_shapes(self) -> dict:
    """The batch as ShapeDtypeStructs: uint8 images and int32 labels [num_d_steps, B, ...],
    split on the B axis."""
    c, batch = self.config, NamedSharding(self.mesh, P(None, 'data'))
    shape = lambda *s, dtype: jax.ShapeDtypeStruct((c.num_d_steps, c.batch_size) + s, dtype,
                                                   sharding=batch)
    return {'image': shape(c.image_size, c.image_size, 3, dtype=jnp.uint8),
            'label': shape(dtype=jnp.int32)}

  def __call__(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    return train_step(self, state, batch)

  def jitted(self):
    """The update under jit over the mesh: state replicated and donated, batch split on
    its B axis (compiled at its first call)."""
    replicated = NamedSharding(self.mesh, P())
    batch = NamedSharding(self.mesh, P(None, 'data'))  # [num_d_steps, B, ...]
    return jax.jit(self, in_shardings=(replicated, batch), out_shardings=(replicated, replicated),
                   donate_argnums=0)

  def compiled(self):
    """The update compiled ahead of time for the mesh's devices (which need not be this
    host's: a TPU slice's compile-only devices compile it for that slice): an executable
    whose memory_analysis() and cost_analysis() can be read before it runs."""
    return self.jitted().lower(self.state_shapes(), self.batch_shapes()).compile()

  # What the steps share

  def latents(self, key, batch_size):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (batch_size, self.config.z_dim))
    y = jax.random.randint(y_key, (batch_size,), 0, self.config.num_classes)
    # Shard fakes like the real batch: each device generates only its part.
    return jax.lax.with_sharding_constraint((z, y), NamedSharding(self.mesh, P('data')))

  def generate(self, state, g_params, z, y, mutable):
    """The raw G in training mode, with `g_params` (to differentiate)."""
    variables = dict(generator_variables(state, ema=False), params=g_params)
    return sampling.generator_forward(self.config, self.generator, self.mesh, variables, z, y,
                                      mutable=mutable)

  def discriminate(self, d_params, d_spectral, real, labels, fake, y_fake):
    """D's logits on reals and fakes [B] and its u after: with 'every_call', two calls, u
    moving at each; else one call on both, interleaved per example ([B, 2] -> [2B], so
    that each device keeps its own examples), u as it is."""
    d = lambda spectral, x, y, mutable: self.discriminator.apply(
        {'params': d_params, 'spectral': spectral}, x, y, mutable=mutable)
    if self.config.state_updates == 'every_call':
      d_real, new = d(d_spectral, real, labels, ['spectral'])
      d_fake, new = d(new['spectral'], fake, y_fake, ['spectral'])
      return d_real, d_fake, new['spectral']
    x = jnp.stack([real, fake], axis=1).reshape(-1, *real.shape[1:])
    y = jnp.stack([labels, y_fake], axis=1).reshape(-1)
    d_real, d_fake = d(d_spectral, x, y, [])[0].reshape(-1, 2).T
    return d_real, d_fake, d_spectral

  def advance_u(self, params, spectral):
    """Every u of a network after config.sn_power_iterations power iterations."""
    return advance_spectral(params, spectral, self.config.sn_power_iterations,
                            self.config.sn_eps)


def make_update(config, mesh, platform: str = '') -> Update:
  """The update of `config` over `mesh`, with the networks' forms for `platform`
  (device_policy; '': this host's). Training and the compile mode both build it here."""
  return Update(config, *make_models(config, platform), mesh)


def step_measure(mesh, platform: str = ''):
  """config -> memory.Memory of its train step compiled for `mesh` (memory.check's and
  memory.largest_batch's `measure`)."""
  return lambda config: memory.compile_step(make_update(config, mesh, platform))[1]
