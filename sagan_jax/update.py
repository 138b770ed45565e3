"""The compiled SAGAN update (num_d_steps D steps, then one G step; TTUR) and the
memory it needs on a device. TensorFlow-free: benchmarks/accelerator_check.py runs it
on machines without TensorFlow or TFDS."""
import functools

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import sampling
from sagan_jax.config import ConfigError
from sagan_jax.layers import advance_spectral, spectral_sigmas
from sagan_jax.losses import discriminator_loss, generator_loss
from sagan_jax.train_state import TrainState, generator_variables

def attention_gammas(state: TrainState) -> dict[str, jax.Array]:
  """{'gamma/G/attention': gamma, ...} for every attention block of G and D."""
  out = {}
  for net, params in (('G', state.g_params), ('D', state.d_params)):
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
      if path[-1].key == 'gamma':
        out['gamma/' + '/'.join([net] + [p.key for p in path[:-1]])] = value
  return out


def sigma_summary(state: TrainState) -> dict[str, jax.Array]:
  """Min, mean and max over G's and over D's layers of the spectral norm sigma
  of the raw weights (what spectral normalisation divides by)."""
  out = {}
  for net, params, spectral in (('G', state.g_params, state.g_spectral),
                                ('D', state.d_params, state.d_spectral)):
    sigmas = jnp.stack(spectral_sigmas(params, spectral))
    out.update({f'sigma/{net}/min': sigmas.min(), f'sigma/{net}/mean': sigmas.mean(),
                f'sigma/{net}/max': sigmas.max()})
  return out


def finite_and_norm(loss, grads) -> tuple[jax.Array, jax.Array]:
  """Whether the loss and the gradients are all finite, and the gradients' global norm,
  from one pass over the gradients: a NaN or infinity anywhere makes the norm one (so
  does a gradient beyond 1e19, which would overflow its square: a divergence too)."""
  norm = optax.tree.norm(grads)
  return jnp.isfinite(loss) & jnp.isfinite(norm), norm


class Update:
  """The SAGAN update of a config on a mesh: (state, batch) -> (state, metrics),
  num_d_steps D steps then one G step. It owns the two Adam optimisers (TTUR), built
  here and nowhere else, so the state it initialises and the steps it takes agree.

  A step whose losses or gradients are not all finite changes nothing but the
  step and the counters `skipped` and `streak`; once `streak` reaches
  config.max_nonfinite_steps every later step is skipped too (the loop stops
  the run when it sees that)."""

  def __init__(self, config, generator, discriminator, mesh):
    self.config, self.generator, self.discriminator, self.mesh = (config, generator,
                                                                  discriminator, mesh)
    adam = lambda lr: optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    self.g_tx, self.d_tx = adam(config.g_lr), adam(config.d_lr)

  def new_state(self, rng) -> TrainState:
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
    return jax.jit(self.new_state, out_shardings=NamedSharding(self.mesh, P()))

  def init(self, seed: int) -> TrainState:
    """The initial state, created directly replicated on the mesh (compiled once)."""
    return self._init(jax.random.PRNGKey(seed))

  def shapes(self) -> TrainState:
    """The state's shapes and dtypes, without computing it (for a restore)."""
    return jax.eval_shape(self.new_state, jax.random.PRNGKey(0))

  def compile(self):
    """jit over the mesh: state replicated and donated, batch split on its B axis."""
    replicated = NamedSharding(self.mesh, P())
    batch = NamedSharding(self.mesh, P(None, 'data'))  # [num_d_steps, B, ...]
    return jax.jit(self, in_shardings=(replicated, batch), out_shardings=(replicated, replicated),
                   donate_argnums=0)

  def compile_for(self, state):
    """The step compiled ahead of time for `state` and the config's batch: an
    executable whose memory_analysis() can be read before it runs."""
    c, batch = self.config, NamedSharding(self.mesh, P(None, 'data'))
    shape = lambda *s, dtype: jax.ShapeDtypeStruct((c.num_d_steps, c.batch_size) + s, dtype,
                                                   sharding=batch)
    return self.compile().lower(state, {
        'image': shape(c.image_size, c.image_size, 3, dtype=jnp.uint8),
        'label': shape(dtype=jnp.int32)}).compile()


  def __call__(self, state: TrainState, batch):
    c = self.config
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), c.num_d_steps + 1)
    new, finite = state, []
    for i in range(c.num_d_steps):
      new, d_metrics = self.d_step(new, batch['image'][i], batch['label'][i], keys[i])
      finite.append(d_metrics.pop('finite'))
    new, g_metrics = self.g_step(new, keys[-1])
    finite.append(g_metrics.pop('finite'))
    # Our own guard rather than optax.apply_if_finite: spectral, BN and EMA
    # state must be held back too, not just the parameters. lax.cond picks
    # whole buffers; a jnp.where per leaf cost 8% of the quickstart CPU step.
    ok = jnp.all(jnp.stack(finite)) & (state.streak < c.max_nonfinite_steps)
    new = jax.lax.cond(ok, lambda: new, lambda: state)
    new = new.replace(step=state.step + 1, skipped=state.skipped + (~ok).astype(jnp.int32),
                      streak=jnp.where(ok, 0, state.streak + 1))
    metrics = {**d_metrics, **g_metrics, **attention_gammas(new), **sigma_summary(new),
               'skipped_steps': new.skipped}
    return new, metrics

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

  def d_step(self, state, images, labels, key):
    """One D update on a real and a fresh fake batch; D's u advances once (with
    config.state_updates='every_call': twice, and G's u and BN averages once). With
    config.grad_accumulation = K > 1, the gradient is the mean of K micro-batches'."""
    c = self.config
    z, y_fake = self.latents(key, images.shape[0])
    if c.grad_accumulation > 1:
      return self.d_step_accumulated(state, images, labels, z, y_fake)
    every_call = c.state_updates == 'every_call'
    # G uses batch statistics; it updates neither its BN averages nor its u here, unless
    # every call does.
    fake, g_new = self.generate(state, state.g_params, z, y_fake,
                                mutable=['batch_stats', 'spectral'] if every_call else
                                ['batch_stats'])
    if every_call:
      state = state.replace(g_batch_stats=g_new['batch_stats'], g_spectral=g_new['spectral'])
    loss_fn = lambda d_params: self.d_loss(d_params, state.d_spectral, images, labels, fake,
                                           y_fake, advance=True)
    (loss, (spectral, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params)
    return self.apply_d(state, grads, spectral, loss, d_real.mean(), d_fake.mean())

  def d_loss(self, d_params, d_spectral, images, labels, fake, y_fake, advance: bool):
    """D's loss on uint8 reals and a (fixed) fake batch -> (loss, (spectral, d_real,
    d_fake)); with `advance`, the u of `d_spectral` advances (once, or per call with
    config.state_updates='every_call'), else it is used as it is."""
    real, fake = images.astype(jnp.float32) / 127.5 - 1.0, jax.lax.stop_gradient(fake)
    d = lambda spectral, x, y: self.discriminator.apply(
        {'params': d_params, 'spectral': spectral}, x, y, mutable=['spectral'] if advance else [])
    if advance and self.config.state_updates == 'every_call':  # two calls, u moving at each
      d_real, new = d(d_spectral, real, labels)
      d_fake, new = d(new['spectral'], fake, y_fake)
    else:
      # Real and fake in one D call, interleaved per example ([B, 2] -> [2B]) so
      # that each device keeps its own examples: no cross-device shuffle.
      x = jnp.stack([real, fake], axis=1).reshape(-1, *real.shape[1:])
      y = jnp.stack([labels, y_fake], axis=1).reshape(-1)
      logits, new = d(d_spectral, x, y)
      d_real, d_fake = logits.reshape(-1, 2).T
    return (discriminator_loss(self.config.loss, d_real, d_fake),
            (new.get('spectral', d_spectral), d_real, d_fake))

  def d_step_accumulated(self, state, images, labels, z, y_fake):
    grads, spectral, (loss, d_real, d_fake) = self.d_gradients(state, images, labels, z, y_fake)
    return self.apply_d(state, grads, spectral, loss, d_real, d_fake)

  def d_gradients(self, state, images, labels, z, y_fake):
    """D's mean gradient over config.grad_accumulation micro-batches, one at a time
    (lax.scan), each with fakes generated in it; D's u advances once, first.
    -> (grads, spectral, (loss, d_real, d_fake) means)."""
    d_spectral = self.advance_u(state.d_params, state.d_spectral)

    def one(total, batch):
      images, labels, z, y_fake = batch
      fake, _ = self.generate(state, state.g_params, z, y_fake, mutable=['batch_stats'])
      (loss, (_, d_real, d_fake)), grads = jax.value_and_grad(self.d_loss, has_aux=True)(
          state.d_params, d_spectral, images, labels, fake, y_fake, advance=False)
      return jax.tree.map(jnp.add, total, (grads, (loss, d_real.mean(), d_fake.mean()))), None

    zeros = jax.tree.map(jnp.zeros_like, (state.d_params, (0.0, 0.0, 0.0)))
    total, _ = jax.lax.scan(one, zeros, self.micro_batches((images, labels, z, y_fake)))
    grads, means = jax.tree.map(lambda x: x / self.config.grad_accumulation, total)
    return grads, d_spectral, means

  def apply_d(self, state, grads, spectral, loss, d_real, d_fake):
    updates, opt_state = self.d_tx.update(grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=opt_state, d_spectral=spectral)
    finite, norm = finite_and_norm(loss, grads)
    return state, {'d_loss': loss, 'd_real': d_real, 'd_fake': d_fake, 'd_grad_norm': norm,
                   'finite': finite}

  def g_step(self, state, key):
    """One G update through the (fixed) D; G's u and BN averages advance once (with
    config.state_updates='every_call', D's u too). With config.grad_accumulation =
    K > 1, the mean gradient of K micro-batches, each normalised by its own BN
    statistics; the BN averages move by the mean of theirs."""
    c = self.config
    z, y = self.latents(key, c.batch_size)
    if c.grad_accumulation > 1:
      return self.g_step_accumulated(state, z, y)
    d_mutable = ['spectral'] if c.state_updates == 'every_call' else []

    def loss_fn(g_params):
      fake, new = self.generate(state, g_params, z, y, mutable=['batch_stats', 'spectral'])
      d_fake, d_new = self.discriminator.apply(
          {'params': state.d_params, 'spectral': state.d_spectral}, fake, y, mutable=d_mutable)
      return generator_loss(c.loss, d_fake), (new, d_new.get('spectral', state.d_spectral))

    (loss, (new, d_spectral)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    return self.apply_g(state.replace(d_spectral=d_spectral), grads, new['batch_stats'],
                        new['spectral'], loss)

  def g_step_accumulated(self, state, z, y):
    grads, batch_stats, g_spectral, loss = self.g_gradients(state, z, y)
    return self.apply_g(state, grads, batch_stats, g_spectral, loss)

  def g_gradients(self, state, z, y):
    """G's mean gradient over config.grad_accumulation micro-batches, each normalised
    by its own BN statistics; G's u advances once, first.
    -> (grads, BN averages, spectral, loss)."""
    c = self.config
    g_spectral = self.advance_u(state.g_params, state.g_spectral)
    with_u = state.replace(g_spectral=g_spectral)
    d_variables = {'params': state.d_params, 'spectral': state.d_spectral}

    def one(total, latents):
      z, y = latents

      def loss_fn(g_params):
        # Each micro-batch's new BN averages start from the same ones, so their mean is
        # the averages moved once by the mean of the micro-batches' statistics.
        fake, new = self.generate(with_u, g_params, z, y, mutable=['batch_stats'])
        return generator_loss(c.loss, self.discriminator.apply(d_variables, fake, y)), new

      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
      return jax.tree.map(jnp.add, total, (grads, new['batch_stats'], loss)), None

    zeros = jax.tree.map(jnp.zeros_like, (state.g_params, state.g_batch_stats, 0.0))
    total, _ = jax.lax.scan(one, zeros, self.micro_batches((z, y)))
    grads, batch_stats, loss = jax.tree.map(lambda x: x / c.grad_accumulation, total)
    return grads, batch_stats, g_spectral, loss

  def apply_g(self, state, grads, batch_stats, g_spectral, loss):
    c = self.config
    updates, opt_state = self.g_tx.update(grads, state.g_opt_state, state.g_params)
    params = optax.apply_updates(state.g_params, updates)
    # ema <- decay * ema + (1 - decay) * params from ema_start_step on, a copy before
    # (weights 0 and 1: one pass over the parameters, not an average and a select).
    use_ema = state.step >= c.ema_start_step
    old_w, new_w = jnp.where(use_ema, c.ema_decay, 0.0), jnp.where(use_ema, 1.0 - c.ema_decay, 1.0)
    ema = jax.tree.map(lambda e, p: old_w * e + new_w * p, state.ema_params, params)
    state = state.replace(g_params=params, g_opt_state=opt_state, ema_params=ema,
                          g_batch_stats=batch_stats, g_spectral=g_spectral)
    finite, norm = finite_and_norm(loss, grads)
    return state, {'g_loss': loss, 'g_grad_norm': norm, 'finite': finite}

  def advance_u(self, params, spectral):
    return advance_spectral(params, spectral, self.config.sn_power_iterations,
                            self.config.sn_eps)

  def micro_batches(self, tree):
    """Leaves [B, ...] -> [K, B/K, ...], K = config.grad_accumulation: micro-batch j holds
    rows j, K + j, 2K + j, ..., so each device's rows split evenly among the K and every
    micro-batch is spread over all devices like the batch."""
    k = self.config.grad_accumulation
    split = lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(jax.tree.map(split, tree),
                                            NamedSharding(self.mesh, P(None, 'data')))


# Memory

def step_memory(compiled) -> dict[str, int]:
  """Bytes per device of a compiled step (XLA's memory_analysis): 'arguments' (the
  state and the batch), 'temporaries' (activations and gradients), 'peak' (arguments
  + outputs + temporaries - what the outputs reuse of donated arguments)."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes + m.generated_code_size_in_bytes)
  return {'arguments': m.argument_size_in_bytes, 'temporaries': m.temp_size_in_bytes,
          'peak': peak}


def device_memory_limit() -> int | None:
  """What one local device can hold (bytes), where the backend says (GPU, TPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats.get('bytes_limit') if stats else None


class MemoryFitError(ConfigError):
  """The compiled step needs more memory than the device has."""


def check_memory(compiled, config, limit: int | None) -> dict[str, int]:
  """Logs the step's memory per device; raises MemoryFitError, naming what would fit,
  when it exceeds `limit` (None: unknown, as on the CPU: the estimate is only logged)."""
  memory = step_memory(compiled)
  gib = lambda b: f'{b / 2**30:.2f} GiB' if b >= 2**30 else f'{b / 2**20:.1f} MiB'
  logging.info('The train step needs %s per device (XLA\'s estimate: %s of state and batch, %s '
               'of activations and gradients)%s.', gib(memory['peak']), gib(memory['arguments']),
               gib(memory['temporaries']),
               f'; the device has {gib(limit)}' if limit else '; the device gives no limit')
  if limit is None or memory['peak'] <= limit:
    return memory
  # Activations scale with the micro-batch: the smallest K whose share of them fits.
  fixed, per_batch, k = memory['peak'] - memory['temporaries'], memory['temporaries'], None
  devices, steps = jax.device_count(), config.grad_accumulation
  while k is None and steps * 2 <= config.batch_size // devices:
    steps *= 2
    if config.batch_size % (steps * devices) == 0 and (
        fixed + per_batch * config.grad_accumulation / steps <= limit):
      k = steps
  estimate = lambda k: gib(fixed + per_batch * config.grad_accumulation / k)
  fits = [f'--config.grad_accumulation={k} (about {estimate(k)})' if k else None,
          None if config.remat else '--config.remat=True',
          None if config.dtype == 'bfloat16' else '--config.dtype=bfloat16',
          'a smaller --config.batch_size']
  raise MemoryFitError(
      f'the train step needs {gib(memory["peak"])} per device at batch_size='
      f'{config.batch_size} and the device has {gib(limit)}: try '
      f'{", ".join(f for f in fits if f)}; nothing was trained')
