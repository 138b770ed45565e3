"""The training state, and where each network's variables live in it: a leaf module,
shared by the training code and the checkpoint reader."""
from typing import Any

import flax
import jax


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


# Where G's and D's variables live in the state: {variable collection: field}. The one
# map of them, for the code that holds a state and for checkpoint's partial restores.
def generator_fields(ema: bool) -> dict[str, str]:
  """The EMA weights with their own BN statistics, or the raw weights with the moving
  averages kept in training; both with the spectral-norm state of training."""
  if ema:
    return {'params': 'ema_params', 'batch_stats': 'ema_batch_stats', 'spectral': 'g_spectral'}
  return {'params': 'g_params', 'batch_stats': 'g_batch_stats', 'spectral': 'g_spectral'}


DISCRIMINATOR_FIELDS = {'params': 'd_params', 'spectral': 'd_spectral'}


def generator_variables(state: TrainState, ema: bool) -> dict:
  """G's variables {'params', 'batch_stats', 'spectral'} from the training state."""
  return {name: getattr(state, field) for name, field in generator_fields(ema).items()}
