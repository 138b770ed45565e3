"""GAN losses on D's logits. D minimises the first, G the second of each pair."""
import jax
import jax.numpy as jnp


def discriminator_loss(kind: str, d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  if kind == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
  if kind == 'non_saturating':  # -log sigmoid(real) - log(1 - sigmoid(fake))
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
  if kind == 'wasserstein':
    return jnp.mean(d_fake) - jnp.mean(d_real)
  raise ValueError(f'unknown loss {kind!r}')


def generator_loss(kind: str, d_fake: jax.Array) -> jax.Array:
  if kind in ('hinge', 'wasserstein'):
    return -jnp.mean(d_fake)
  if kind == 'non_saturating':  # -log sigmoid(fake)
    return jnp.mean(jax.nn.softplus(-d_fake))
  raise ValueError(f'unknown loss {kind!r}')
