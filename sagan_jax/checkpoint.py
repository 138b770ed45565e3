"""Checkpoints through Orbax: the whole training state, every process's data
position and the config, written asynchronously; restored onto any mesh.

workdir/checkpoints/<step>/ holds three items:
  state   the TrainState (both nets, spectral and BN state, both Adam states,
          EMA, step, RNG key, non-finite counters), replicated arrays;
  data    the data position, a few integers as JSON (the global stream's
          elements consumed: the same on every process);
  meta    {'config': ..., 'num_processes': ...} as JSON.
Orbax writes a step into a temporary directory and renames it when every item
is complete, so a process killed mid-write leaves the earlier steps loadable.
"""
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from sagan_jax import sampling
from sagan_jax.config import default_config
from sagan_jax.mesh import abstract
from sagan_jax.models import make_models
from sagan_jax.train_state import DISCRIMINATOR_FIELDS, generator_fields

# Fields a run cannot change and still be the same run: they fix the shapes of
# the state, or the data stream whose position is restored.
FIXED_FIELDS = ('image_size', 'num_classes', 'ch', 'z_dim', 'attention_resolution', 'attention',
                'cbn', 'dataset', 'random_flip', 'seed')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used as asked; the message says why and what to do."""


def checkpoint_dir(workdir: str, best: bool = False) -> epath.Path:
  """workdir/checkpoints (the latest ones), or workdir/checkpoints_best."""
  return epath.Path(workdir) / ('checkpoints_best' if best else 'checkpoints')


# Writing

def _whole_arrays_on_cpu() -> None:
  """Orbax writes a replicated array in slices, one per replica (use_replica_parallel;
  on by default but on GPU): on a TPU pod that spreads the writing over the hosts. The
  devices of a CPU share one host and disk: there it only slices each array once per
  device, a program compiled per shape, several times slower than writing whole arrays."""
  if jax.default_backend() == 'cpu':
    default = ocp.type_handlers.get_type_handler(jax.Array)
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=getattr(default, '_array_metadata_store', None)), override=True)


def make_manager(workdir: str, config=None, best: bool = False) -> ocp.CheckpointManager:
  """The manager of workdir/checkpoints, keeping the latest config.checkpoints_to_keep;
  with best=True of workdir/checkpoints_best, keeping the one of least
  metrics['distance']; read only without a config."""
  if config is None:
    policy = None
  elif best:  # BestN keeps the last n after sorting; reverse: the smallest distance last
    policy = ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m['distance'], reverse=True,
                                           n=1)
  else:
    policy = ocp.checkpoint_managers.LatestN(config.checkpoints_to_keep)
  if config is not None:
    _whole_arrays_on_cpu()
  options = ocp.CheckpointManagerOptions(
      create=config is not None, read_only=config is None, enable_async_checkpointing=True,
      cleanup_tmp_directories=config is not None, preservation_policy=policy,
      # Its own barrier names: the latest and the best manager may save the same step at
      # once, and on several processes same-named barriers collide.
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix='best' if best else 'latest'))
  return ocp.CheckpointManager(checkpoint_dir(workdir, best), options=options,
                               item_names=('state', 'data', 'meta'))


def save(manager: ocp.CheckpointManager, state, data, config, metrics=None) -> bool:
  """Starts an asynchronous save of `state` at its step (the device-to-host copy
  is done when this returns, so the state may be donated). False if that step
  is saved already."""
  step = int(state.step)
  if step in manager.all_steps():
    return False
  meta = {'config': config.to_dict(), 'num_processes': jax.process_count()}
  logging.info('Saving the checkpoint of step %d in %s', step, manager.directory)
  return manager.save(step, force=True, metrics=metrics, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data.position()),
      meta=ocp.args.JsonSave(meta)))


# Reading

def _step_or_latest(manager, workdir: str, step: int | None) -> int:
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f'no checkpoint in {manager.directory}: train first with '
                          f'python main.py --config=... --workdir={workdir}')
  if step is None:
    return max(steps)
  if step not in steps:
    raise CheckpointError(f'no checkpoint of step {step} in {manager.directory}; '
                          f'saved steps: {sorted(steps)}')
  return step


def read_meta(manager, step: int) -> dict:
  """{'config': the run's config, 'num_processes': ...}. The config is today's
  defaults under the saved fields: a field added since the run has its default."""
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  config = default_config()
  config.update({k: v for k, v in meta['config'].items() if k in config})
  return dict(meta, config=config)


def differences(saved, config, fields) -> list[str]:
  """'field: saved -> now' for each of `fields` that differs."""
  return [f'{f}: {saved.get(f)!r} -> {config[f]!r}' for f in fields if saved.get(f) != config[f]]


def saved_fields(manager, step: int) -> set[str]:
  """The names of the TrainState fields in the checkpoint of `step`."""
  metadata = ocp.StandardCheckpointer().metadata(manager.directory / str(step) / 'state')
  return set(metadata.item_metadata.keys())


def restore_for_training(manager, config, abstract_state, data):
  """The latest training state on the mesh of `abstract_state` (ShapeDtypeStructs
  with shardings) and the data position restored into `data`; None if the
  workdir has no checkpoint. The config is checked before any array is read."""
  step = manager.latest_step()
  if step is None:
    return None
  meta = read_meta(manager, step)
  fixed = differences(meta['config'], config, FIXED_FIELDS)
  if fixed:
    raise CheckpointError(
        f'the checkpoint of step {step} in {manager.directory} is of a different run; '
        f'differing fields: {"; ".join(fixed)}. Use the checkpoint\'s values or a new --workdir')
  items = {}
  if (manager.directory / str(step) / 'data' / 'process_0.index').exists():
    # tf.data's per-process positions, from before the index-based input: continue the
    # new stream where this many steps of its batches end.
    saved = meta['config']
    data.restore(dict(data.position(),
                      consumed=step * saved['batch_size'] * saved['num_d_steps']))
    logging.warning('The checkpoint of step %d holds a data position of the former tf.data '
                    'input; the data stream goes on from step %d of the new one.', step, step)
  else:
    items = {'data': ocp.args.JsonRestore()}
  changed = differences(meta['config'], config, sorted(set(config.keys()) - set(FIXED_FIELDS)))
  if changed:
    logging.warning('Resuming step %d with changed fields: %s', step, '; '.join(changed))
  fields = saved_fields(manager, step)
  if 'ema_batch_stats' in fields:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), **items))
    if items:
      data.restore(restored.data)
    return restored.state
  # Written before the EMA G had BN statistics of its own: start them from the
  # raw G's (the loop measures them from the EMA weights before any use).
  # Read through a manager of its own: the training manager's 'state' item must
  # stay bound to StandardSave.
  wanted = {f: getattr(abstract_state, f) for f in fields}
  reader = make_manager(os.fspath(manager.directory.parent))
  restored = reader.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted)),
      **items))
  reader.close()
  if items:
    data.restore(restored.data)
  restored = restored.state
  logging.warning('The checkpoint of step %d predates the EMA generator\'s own batch-norm '
                  'statistics; they are measured from its weights before their first use.', step)
  # A copy: the train step donates the state, and one buffer must not be donated twice.
  return abstract_state.replace(**restored,
                                ema_batch_stats=jax.tree.map(jnp.copy, restored['g_batch_stats']))


def restore_generator(workdir: str, mesh, step: int | None = None, ema: bool = True,
                      best: bool = False):
  """(G's variables {'params', 'batch_stats', 'spectral'}, the run's config, step)
  from a checkpoint (the latest by default), replicated on `mesh` whatever the
  device count it was written with. Only G's arrays are read: the EMA weights,
  or the raw ones with ema=False."""
  if not checkpoint_dir(workdir, best).exists():
    raise CheckpointError(f'no checkpoint in {workdir}: {checkpoint_dir(workdir, best)} does '
                          'not exist (is --workdir the directory training wrote to?)')
  manager = make_manager(workdir, best=best)
  step = _step_or_latest(manager, workdir, step)
  config = read_meta(manager, step)['config']
  generator = make_models(config)[0]
  shapes = jax.eval_shape(lambda: generator.init(
      jax.random.PRNGKey(0), jnp.zeros((1, config.z_dim)), jnp.zeros((1,), jnp.int32),
      train=False))
  fields = generator_fields(ema)
  # False: written before the EMA G had statistics of its own; take the raw G's for now.
  measured = fields['batch_stats'] in saved_fields(manager, step)
  if not measured:
    fields['batch_stats'] = generator_fields(ema=False)['batch_stats']
  restored = _read_fields(manager, step,
                          abstract({f: shapes[name] for name, f in fields.items()}, mesh))
  manager.close()
  variables = {name: restored[f] for name, f in fields.items()}
  if not measured:
    logging.warning('The checkpoint of step %d predates the EMA generator\'s own batch-norm '
                    'statistics: measuring them now from %d generated batches.', step,
                    config.ema_bn_batches)
    standing = sampling.StandingStatistics(config, generator, mesh, config.ema_bn_batches,
                                           config.batch_size)
    variables = standing(variables, sampling.ema_statistics_key(config.seed, step))
  return variables, config, step


def _read_fields(manager, step: int, wanted: dict) -> dict:
  """Only the TrainState fields named in `wanted` (abstract arrays) of a checkpoint."""
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
      partial_restore=True))).state


def restore_discriminator(workdir: str, mesh, step: int) -> dict:
  """D's variables {'params', 'spectral'} of the checkpoint of `step`."""
  manager = make_manager(workdir)
  config = read_meta(manager, step)['config']
  discriminator = make_models(config)[1]
  shapes = jax.eval_shape(lambda: discriminator.init(
      jax.random.PRNGKey(0), jnp.zeros((1, config.image_size, config.image_size, 3)),
      jnp.zeros((1,), jnp.int32)))
  restored = _read_fields(manager, step, abstract(
      {f: shapes[name] for name, f in DISCRIMINATOR_FIELDS.items()}, mesh))
  manager.close()
  return {name: restored[f] for name, f in DISCRIMINATOR_FIELDS.items()}
