"""Training state, the compiled SAGAN update (TTUR) and the training loop."""
import signal
import threading
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import checkpoint, evaluation, input_pipeline, logs, sampling
from sagan_jax.config import ConfigError, validate
from sagan_jax.layers import spectral_sigmas
from sagan_jax.losses import discriminator_loss, generator_loss
from sagan_jax.mesh import make_mesh
from sagan_jax.models import make_models


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], completed G steps
  rng: jax.Array  # base key; step s draws from fold_in(rng, s)
  g_params: Any
  g_batch_stats: Any  # moving averages of G's batch norms
  g_spectral: Any  # spectral-norm u vectors of G
  g_opt_state: Any
  ema_params: Any  # exponential moving average of g_params
  ema_batch_stats: Any  # BN statistics of the EMA weights themselves (standing statistics,
  #   recomputed by the loop before every use of the EMA G: with_ema_statistics)
  d_params: Any
  d_spectral: Any
  d_opt_state: Any
  skipped: jax.Array  # int32 [], steps skipped for non-finite losses or gradients
  streak: jax.Array  # int32 [], consecutive skipped steps up to this one


# Set-up

def make_optimizers(config):
  """Adam for G and D at two learning rates (TTUR)."""
  adam = lambda lr: optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2)
  return adam(config.g_lr), adam(config.d_lr)


def create_train_state(config, generator, discriminator, rng) -> TrainState:
  g_tx, d_tx = make_optimizers(config)
  rng, g_key, d_key = jax.random.split(rng, 3)
  y = jnp.zeros((1,), jnp.int32)
  g_vars = generator.init(g_key, jnp.zeros((1, config.z_dim)), y, train=False)
  d_vars = discriminator.init(d_key, jnp.zeros((1, config.image_size, config.image_size, 3)), y)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      g_params=g_vars['params'], g_batch_stats=g_vars['batch_stats'],
      g_spectral=g_vars['spectral'], g_opt_state=g_tx.init(g_vars['params']),
      ema_params=jax.tree.map(jnp.copy, g_vars['params']),
      ema_batch_stats=jax.tree.map(jnp.copy, g_vars['batch_stats']),
      d_params=d_vars['params'], d_spectral=d_vars['spectral'],
      d_opt_state=d_tx.init(d_vars['params']),
      skipped=jnp.zeros((), jnp.int32), streak=jnp.zeros((), jnp.int32))


def init_train_state(config, generator, discriminator, mesh, seed: int) -> TrainState:
  """The initial state, created directly replicated on the mesh."""
  return jax.jit(lambda key: create_train_state(config, generator, discriminator, key),
                 out_shardings=NamedSharding(mesh, P()))(jax.random.PRNGKey(seed))


def generator_variables(state: TrainState, ema: bool) -> dict:
  """G's variables from the training state: the EMA weights with their own BN
  statistics, or the raw weights with the moving averages kept in training."""
  if ema:
    return {'params': state.ema_params, 'batch_stats': state.ema_batch_stats,
            'spectral': state.g_spectral}
  return {'params': state.g_params, 'batch_stats': state.g_batch_stats,
          'spectral': state.g_spectral}


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


# Update step

def all_finite(loss, grads) -> jax.Array:
  return jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))


def make_train_step(config, generator, discriminator, mesh):
  """The pure function (state, batch) -> (state, metrics); see compile_train_step.

  A step whose losses or gradients are not all finite changes nothing but the
  step and the counters `skipped` and `streak`; once `streak` reaches
  config.max_nonfinite_steps every later step is skipped too (the loop stops
  the run when it sees that)."""
  g_tx, d_tx = make_optimizers(config)
  per_example = NamedSharding(mesh, P('data'))

  def latents(key, batch_size):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (batch_size, config.z_dim))
    y = jax.random.randint(y_key, (batch_size,), 0, config.num_classes)
    # Shard fakes like the real batch: each device generates only its part.
    return jax.lax.with_sharding_constraint((z, y), per_example)

  def g_variables(state, params):  # the raw G's, with `params` to differentiate
    return dict(generator_variables(state, ema=False), params=params)

  def d_step(state, images, labels, key):
    """One D update on a real and a fresh fake batch; D's u advances once."""
    z, y_fake = latents(key, images.shape[0])
    # G uses batch statistics but updates neither its BN averages nor its u here.
    fake, _ = sampling.generator_forward(config, generator, mesh,
                                         g_variables(state, state.g_params),
                                z, y_fake, mutable=['batch_stats'])
    real = images.astype(jnp.float32) / 127.5 - 1.0
    # Real and fake in one D call, interleaved per example ([B, 2] -> [2B]) so
    # that each device keeps its own examples: no cross-device shuffle.
    x = jnp.stack([real, jax.lax.stop_gradient(fake)], axis=1).reshape(-1, *real.shape[1:])
    y = jnp.stack([labels, y_fake], axis=1).reshape(-1)

    def loss_fn(d_params):
      logits, new = discriminator.apply({'params': d_params, 'spectral': state.d_spectral}, x, y,
                                        mutable=['spectral'])
      d_real, d_fake = logits.reshape(-1, 2).T
      return discriminator_loss(config.loss, d_real, d_fake), (new['spectral'], d_real, d_fake)

    (loss, (spectral, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params)
    updates, opt_state = d_tx.update(grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=opt_state, d_spectral=spectral)
    return state, {'d_loss': loss, 'd_real': d_real.mean(), 'd_fake': d_fake.mean(),
                   'd_grad_norm': optax.tree.norm(grads), 'finite': all_finite(loss, grads)}

  def g_step(state, key):
    """One G update through the (fixed) D; G's u and BN averages advance once."""
    z, y = latents(key, config.batch_size)

    def loss_fn(g_params):
      fake, new = sampling.generator_forward(config, generator, mesh, g_variables(state, g_params),
                                             z, y,
                                    mutable=['batch_stats', 'spectral'])
      d_fake = discriminator.apply({'params': state.d_params, 'spectral': state.d_spectral},
                                   fake, y)
      return generator_loss(config.loss, d_fake), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, opt_state = g_tx.update(grads, state.g_opt_state, state.g_params)
    params = optax.apply_updates(state.g_params, updates)
    # ema <- decay * ema + (1 - decay) * params, from ema_start_step on; a copy before.
    averaged = optax.incremental_update(params, state.ema_params, 1.0 - config.ema_decay)
    use_ema = state.step >= config.ema_start_step
    ema = jax.tree.map(lambda a, p: jnp.where(use_ema, a, p), averaged, params)
    state = state.replace(g_params=params, g_opt_state=opt_state, ema_params=ema,
                          g_batch_stats=new['batch_stats'], g_spectral=new['spectral'])
    return state, {'g_loss': loss, 'g_grad_norm': optax.tree.norm(grads),
                   'finite': all_finite(loss, grads)}

  def train_step(state: TrainState, batch):
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), config.num_d_steps + 1)
    new, finite = state, []
    for i in range(config.num_d_steps):
      new, d_metrics = d_step(new, batch['image'][i], batch['label'][i], keys[i])
      finite.append(d_metrics.pop('finite'))
    new, g_metrics = g_step(new, keys[-1])
    finite.append(g_metrics.pop('finite'))
    # Our own guard rather than optax.apply_if_finite: spectral, BN and EMA
    # state must be held back too, not just the parameters. lax.cond picks
    # whole buffers; a jnp.where per leaf cost 8% of the quickstart CPU step.
    ok = jnp.all(jnp.stack(finite)) & (state.streak < config.max_nonfinite_steps)
    new = jax.lax.cond(ok, lambda: new, lambda: state)
    new = new.replace(step=state.step + 1, skipped=state.skipped + (~ok).astype(jnp.int32),
                      streak=jnp.where(ok, 0, state.streak + 1))
    metrics = {**d_metrics, **g_metrics, **attention_gammas(new), **sigma_summary(new),
               'skipped_steps': new.skipped}
    return new, metrics

  train_step.d_step, train_step.g_step = d_step, g_step  # for tests of the parts
  return train_step


def compile_train_step(config, generator, discriminator, mesh):
  """jit over the mesh: state replicated and donated, batch split on its B axis."""
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P(None, 'data'))  # [num_d_steps, B, ...]
  return jax.jit(make_train_step(config, generator, discriminator, mesh),
                 in_shardings=(replicated, batch), out_shardings=(replicated, replicated),
                 donate_argnums=0)


# Training loop

def shard_batch(batch, mesh):
  """Global jax.Arrays of the per-process numpy batches, split on the B axis."""
  sharding = NamedSharding(mesh, P(None, 'data'))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


class NonFiniteError(RuntimeError):
  """config.max_nonfinite_steps steps in a row had non-finite losses or gradients."""


def check_finite(state: TrainState, config, workdir: str) -> int:
  """The current streak of skipped steps; raises NonFiniteError once it is too long."""
  streak = int(state.streak)
  if streak >= config.max_nonfinite_steps:
    step = int(state.step)
    raise NonFiniteError(
        f'steps {step - streak + 1} to {step} had non-finite losses or gradients '
        f'({streak} in a row; config.max_nonfinite_steps={config.max_nonfinite_steps}) and were '
        f'skipped. The run stops; the checkpoints in {checkpoint.checkpoint_dir(workdir)} were '
        f'all written before step {step - streak + 1}. Resume from the latest with lower learning '
        'rates (--config.g_lr, --config.d_lr), or look at the data')
  return streak


class Preemption:
  """True once the run should save and stop: SIGTERM in a single-process run;
  in a multi-process run, the preemption sync point that jax.distributed agrees
  on (its notifier catches SIGTERM, e.g. a TPU VM's maintenance event), so that
  every process saves the same step."""

  def __init__(self, manager):
    self._manager, self._signalled, self._previous = manager, False, None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM: saving a checkpoint after this step, then stopping.')
    self._signalled = True

  def __call__(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._signalled

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains, resuming from the latest checkpoint in `workdir` if there is one;
  logs, and writes sample grids and checkpoints into `workdir`."""
  validate(config, jax.device_count(), jax.process_count())
  data = input_pipeline.create_train_iterator(config)  # a missing dataset fails here, early
  mesh = make_mesh()
  generator, discriminator = make_models(config)
  image_sampler = sampling.ImageSampler(generator, mesh)  # sample grids and evaluation
  evaluator = Evaluator(config, mesh, workdir, image_sampler) if config.eval_every_steps else None
  manager = checkpoint.make_manager(workdir, config)
  best = checkpoint.make_manager(workdir, config, best=True) if evaluator else None
  try:
    return _train(config, workdir, data, mesh, generator, discriminator, image_sampler, manager,
                  evaluator, best)
  finally:  # a save in flight completes, whatever stopped the loop
    for m in (manager, best):
      if m:
        m.wait_until_finished()
        m.close()


class EMAStatistics:
  """state -> state with `ema_batch_stats` measured from the EMA weights
  (sampling.StandingStatistics: the mean statistics of config.ema_bn_batches
  generated batches of config.batch_size), once per step.

  Why not the raw G's moving averages: they are statistics of other weights,
  and the EMA G sampled with them is a blurred average (issue 16). Why not an
  average kept up to date inside the train step: that is one more G forward
  pass on every step (about 1/13 of the step's work, counting passes), while the EMA is used
  only for grids, evaluations and checkpoints; measured at each use, the
  statistics are also exactly those of the weights in use, with no lag. The
  batches come from the seed and the step, so a resumed run computes the same
  statistics as an uninterrupted one."""

  def __init__(self, config, generator, mesh):
    self._standing = sampling.StandingStatistics(config, generator, mesh, config.ema_bn_batches,
                                                 config.batch_size)
    self._seed = config.seed
    self._step = None  # the step they were last measured at

  def __call__(self, state: TrainState) -> TrainState:
    step = int(state.step)
    if step != self._step:
      stats = self._standing(generator_variables(state, ema=True),
                             sampling.ema_statistics_key(self._seed, step))['batch_stats']
      state, self._step = state.replace(ema_batch_stats=stats), step
    return state


class Evaluator:
  """In-training evaluation of the raw and EMA G (evaluation.py); set up, with
  the reference statistics, before anything is compiled for training."""

  def __init__(self, config, mesh, workdir, image_sampler):
    self.config, self.evaluation = config, evaluation
    self.images = image_sampler
    try:
      self.extractor = evaluation.make_extractor(config, mesh)
    except FileNotFoundError as e:
      raise ConfigError(f'config.eval_every_steps={config.eval_every_steps} needs {e}') from None
    try:
      self.reference, self.class_ref, self.classes = evaluation.references(
          config, self.extractor, config.eval_num_samples,
          evaluation.reference_dir(config, workdir), config.eval_intra_class)
    except ValueError as e:
      raise ConfigError(f'config.eval_intra_class={config.eval_intra_class!r}: {e}') from None
    self.distance = 'fid' if self.extractor.kind == 'inception' else 'frechet_distance'
    self.floor = evaluation.floor(config, self.extractor, self.reference,
                                  config.eval_num_samples,
                                  evaluation.reference_dir(config, workdir))
    logging.info('Evaluation floor (%d real images outside the reference, scored alike) | %s',
                 config.eval_num_samples, format_metrics(self.floor))

  def __call__(self, state: TrainState) -> dict:
    """{'eval/ema/fid': ..., 'eval/raw/fid': ..., ...}."""
    out = {}
    for name in ('ema', 'raw'):
      result = self.evaluation.evaluate(self.images, generator_variables(state, name == 'ema'),
                                        self.config, self.extractor,
                                        self.reference, self.config.eval_num_samples,
                                        seed=self.config.seed, class_ref=self.class_ref,
                                        classes=self.classes)
      # Scalars only: each class's intra-class FID is in --mode=eval's JSON.
      out.update({f'eval/{name}/{k}': v for k, v in result.items()
                  if k != 'num_samples' and not isinstance(v, dict)})
    return out


def format_metrics(metrics: dict) -> str:
  return ' '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                  if '_per_s' not in k and not k.endswith('_std') and k != 'seconds')


def _train(config, workdir, data, mesh, generator, discriminator, image_sampler, manager,
           evaluator, best):
  shapes = jax.eval_shape(
      lambda: create_train_state(config, generator, discriminator, jax.random.PRNGKey(0)))
  state = checkpoint.restore_for_training(manager, config, checkpoint.abstract(shapes, mesh),
                                          data)
  if state is None:
    state = init_train_state(config, generator, discriminator, mesh, config.seed)
  else:
    logging.info('Resumed from the checkpoint of step %d in %s.', int(state.step),
                 checkpoint.checkpoint_dir(workdir))
  train_step = compile_train_step(config, generator, discriminator, mesh)
  logging.info('Compiling the train step and the samplers (a restart with the same config '
               'loads them from the compilation cache).')
  with_ema_statistics = EMAStatistics(config, generator, mesh)

  is_main = jax.process_index() == 0  # only process 0 writes (workdir may be gs://)
  sample_dir = epath.Path(workdir) / 'samples'
  if is_main:
    sample_dir.mkdir(parents=True, exist_ok=True)
  z, labels = sampling.grid_latents(config, config.seed + 1)
  first_step = int(state.step)
  writer = logs.MetricWriter(workdir, enabled=is_main,
                             resumed_from=first_step if first_step else None)

  def write_samples(state, step: int):
    """The fixed-noise grids of the raw and the EMA G: PNGs and TensorBoard images."""
    rows = min(config.sample_classes, config.num_classes)
    grids = {}
    for name in ('raw', 'ema'):
      images = image_sampler(generator_variables(state, ema=name == 'ema'), z, labels)
      if is_main:
        grids[f'samples/{name}'] = sampling.save_grid(images, rows,
                                                      sample_dir / f'{step:07d}_{name}.png')
    writer.images(step, grids)

  if first_step == 0:
    state = with_ema_statistics(state)
    write_samples(state, first_step)
  images_per_step = config.batch_size * config.num_d_steps
  progress = logs.Progress('step', config.num_train_steps, 'steps', first_step,
                           items=('images', images_per_step))
  logging.info('Training steps %d to %d; %d devices, %d processes; G %.2fM, D %.2fM parameters.',
               first_step + 1, config.num_train_steps, jax.device_count(), jax.process_count(),
               sum(x.size for x in jax.tree.leaves(state.g_params)) / 1e6,
               sum(x.size for x in jax.tree.leaves(state.d_params)) / 1e6)
  preemption = Preemption(manager)
  try:
    for step in range(first_step, config.num_train_steps):
      batch = shard_batch(next(data), mesh)
      with jax.transfer_guard('disallow'):  # no hidden host<->device copies in the step
        state, metrics = train_step(state, batch)
      done = step + 1
      last = done == config.num_train_steps
      if done % config.log_every_steps == 0 or last:
        check_finite(state, config, workdir)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        logging.info(progress.line(done, ' '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                                                  if not k.startswith('sigma/')) + ' | '))
        writer.scalars(done, {**metrics, 'steps_per_s': progress.rate,
                              'images_per_s': progress.rate * images_per_step,
                              'g_lr': config.g_lr, 'd_lr': config.d_lr})
      if done % config.sample_every_steps == 0 or last:
        state = with_ema_statistics(state)
        write_samples(state, done)
      if evaluator and (done % config.eval_every_steps == 0 or last):
        state = with_ema_statistics(state)
        results = evaluator(state)
        logging.info('eval at step %d | %s', done, format_metrics(results))
        writer.scalars(done, results)
        if check_finite(state, config, workdir) == 0:  # kept if its EMA distance is the least
          checkpoint.save(best, state, data, config,
                          metrics={'distance': results[f'eval/ema/{evaluator.distance}']})
      preempted = preemption(done)
      if done % config.checkpoint_every_steps == 0 or last or preempted:
        # Periodic saves only from a healthy state, so that a run of skipped
        # steps never rotates out the checkpoints from before it.
        streak = check_finite(state, config, workdir)
        if streak == 0 or last or preempted:
          state = with_ema_statistics(state)
          checkpoint.save(manager, state, data, config)
      if preempted:
        manager.wait_until_finished()
        logging.warning('Preempted: saved the checkpoint of step %d; the next start resumes '
                        'from it.', done)
        break
  finally:
    preemption.close()
    writer.close()
  return state
