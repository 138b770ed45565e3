"""The training loop: data, the compiled update (update.py), sample grids,
evaluations, checkpoints and preemption."""
import concurrent.futures
import signal
import threading

import jax
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import checkpoint, evaluation, input_pipeline, logs, memory, sampling
from sagan_jax.config import validate
from sagan_jax.mesh import make_mesh, wait_for_every_process
from sagan_jax.train_state import TrainState, generator_variables
from sagan_jax.update import make_update, step_measure

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
  mesh = make_mesh()
  data = input_pipeline.create_train_iterator(config, mesh)  # a missing dataset fails here
  wait_for_every_process('data')  # before the first collective (Orbax's), however long it took
  update = make_update(config, mesh)
  manager = checkpoint.make_manager(workdir, config)
  best = checkpoint.make_manager(workdir, config, best=True) if config.eval_every_steps else None
  image_sampler = sampling.ImageSampler(update.generator, mesh)  # sample grids and evaluation
  logging.info('Compiling the train step and the samplers (a restart with the same config '
               'loads them from the compilation cache).')
  try:
    # XLA compiles the step in a thread of its own (it holds no GIL while it compiles) while
    # this one restores or initialises the state and draws the step-0 grids, compiling
    # their programs too: the start-up's two long waits overlap.
    with concurrent.futures.ThreadPoolExecutor(1) as compiler:
      compiling = compiler.submit(memory.compile_step, update)
      loop = Loop(workdir, data, update, image_sampler, manager, best)
      train_step, step_memory = compiling.result()
    # Before the evaluator's reference statistics, the expensive part of the set-up.
    memory.check(step_memory, config, jax.device_count(), memory.device_memory_limit(),
                 step_measure(mesh))
    evaluator = (evaluation.Evaluator(config, mesh, workdir, image_sampler)
                 if config.eval_every_steps else None)
    return loop.run(train_step, evaluator)
  finally:  # a save in flight completes, whatever stopped the loop
    data.close()
    for m in (manager, best):
      if m:
        m.wait_until_finished()
        m.close()


class EMAStatistics:
  """state -> state with `ema_batch_stats` measured from the EMA weights
  (sampling.StandingStatistics: the mean statistics of config.ema_bn_batches
  generated batches of config.batch_size), once per step.

  Why not the raw G's moving averages: they are statistics of other weights,
  and the EMA G sampled with them is a blurred average. Why not an
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


class Loop:
  """The training loop of train_and_evaluate: restores or initialises the state
  (drawing the grids of step 0), then `run` steps, logging, drawing sample grids,
  evaluating and saving on schedule."""

  def __init__(self, workdir, data, update, image_sampler, manager, best):
    config, mesh = update.config, update.mesh
    self.config, self.mesh = config, mesh
    self.workdir, self.data, self.images = workdir, data, image_sampler
    self.manager, self.best = manager, best
    self.state = checkpoint.restore_for_training(
        manager, config, update.state_shapes(), data)
    if self.state is None:
      self.state = update.initial_state(config.seed)
    else:
      logging.info('Resumed from the checkpoint of step %d in %s.', int(self.state.step),
                   checkpoint.checkpoint_dir(workdir))
    self.with_ema_statistics = EMAStatistics(config, update.generator, mesh)
    self.is_main = jax.process_index() == 0  # only process 0 writes (workdir may be gs://)
    self.sample_dir = epath.Path(workdir) / 'samples'
    if self.is_main:
      self.sample_dir.mkdir(parents=True, exist_ok=True)
    self.grid_latents = sampling.grid_latents(config, config.seed + 1)
    self.first_step = int(self.state.step)
    self.writer = logs.MetricWriter(workdir, enabled=self.is_main,
                                    resumed_from=self.first_step or None)
    self.images_per_step = config.batch_size * config.num_d_steps
    self.progress = logs.Progress('step', config.num_train_steps, 'steps', self.first_step,
                                  items=('images', self.images_per_step))
    if self.first_step == 0:
      self.write_samples(0)

  def run(self, train_step, evaluator) -> TrainState:
    """Trains with `train_step` (the update compiled for the state), evaluating with
    `evaluator` (None: never)."""
    self.train_step, self.evaluator = train_step, evaluator
    c, first_step = self.config, self.first_step
    logging.info('Training steps %d to %d; %d devices, %d processes; G %.2fM, D %.2fM '
                 'parameters.', first_step + 1, c.num_train_steps, jax.device_count(),
                 jax.process_count(), *(sum(x.size for x in jax.tree.leaves(p)) / 1e6
                                        for p in (self.state.g_params, self.state.d_params)))
    due = lambda done, every: done % every == 0 or done == c.num_train_steps
    preemption = Preemption(self.manager)
    try:
      for step in range(first_step, c.num_train_steps):
        batch = shard_batch(next(self.data), self.mesh)
        with jax.transfer_guard('disallow'):  # no hidden host<->device copies in the step
          self.state, metrics = self.train_step(self.state, batch)
        done = step + 1
        if due(done, c.log_every_steps):
          self.log(done, metrics)
        if due(done, c.sample_every_steps):
          self.write_samples(done)
        if self.evaluator and due(done, c.eval_every_steps):
          self.evaluate(done)
        preempted = preemption(done)
        if due(done, c.checkpoint_every_steps) or preempted:
          self.save(force=done == c.num_train_steps or preempted)
        if preempted:
          self.manager.wait_until_finished()
          logging.warning('Preempted: saved the checkpoint of step %d; the next start resumes '
                          'from it.', done)
          break
    finally:
      preemption.close()
      self.writer.close()
    return self.state

  def log(self, step: int, metrics: dict):
    check_finite(self.state, self.config, self.workdir)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    logging.info(self.progress.line(step, ' '.join(f'{k} {v:.4f}' for k, v in metrics.items()
                                                   if not k.startswith('sigma/')) + ' | '))
    self.writer.scalars(step, {**metrics, 'steps_per_s': self.progress.rate,
                               'images_per_s': self.progress.rate * self.images_per_step,
                               'g_lr': self.config.g_lr, 'd_lr': self.config.d_lr})

  def write_samples(self, step: int):
    """The fixed-noise grids of the raw and the EMA G: PNGs and TensorBoard images."""
    self.state = self.with_ema_statistics(self.state)
    rows = min(self.config.sample_classes, self.config.num_classes)
    grids = {}
    for name in ('raw', 'ema'):
      images = self.images(generator_variables(self.state, ema=name == 'ema'),
                           *self.grid_latents)
      grids[f'samples/{name}'] = sampling.save_grid(  # written by process 0 alone
          images, rows, self.sample_dir / f'{step:07d}_{name}.png')
    self.writer.images(step, grids)

  def evaluate(self, step: int):
    """Evaluates both generators; keeps the state as the best checkpoint if its EMA
    distance is the least so far."""
    self.state = self.with_ema_statistics(self.state)
    results = self.evaluator({name: generator_variables(self.state, ema=name == 'ema')
                              for name in ('ema', 'raw')})
    logging.info('eval at step %d | %s', step, logs.format_metrics(results))
    self.writer.scalars(step, results)
    if check_finite(self.state, self.config, self.workdir) == 0:
      checkpoint.save(self.best, self.state, self.data, self.config,
                      metrics={'distance': results[f'eval/ema/{self.evaluator.distance}']})

  def save(self, force: bool):
    """Periodic saves only from a healthy state, so that a run of skipped steps never
    rotates out the checkpoints from before it; the last and a preempted step always."""
    if check_finite(self.state, self.config, self.workdir) == 0 or force:
      self.state = self.with_ema_statistics(self.state)
      checkpoint.save(self.manager, self.state, self.data, self.config)
