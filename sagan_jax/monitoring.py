"""What the train step reports beside its losses: the attention gammas, the spectral norms
of the raw weights, and whether a step was finite."""
import jax
import jax.numpy as jnp
import optax

from sagan_jax.layers import spectral_sigmas
from sagan_jax.train_state import TrainState


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
