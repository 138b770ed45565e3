"""Gradient accumulation: a step's gradient as the mean over K micro-batches, taken one
at a time, so that a batch whose activations do not fit a device fits as K smaller ones.
Both of update.py's steps take their gradients through `mean_gradient`."""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def mean_gradient(loss_fn, params, carry, batch, k: int, mesh):
  """The gradient of loss_fn(params, carry, micro-batch) -> (loss, (carry, outputs)):
  the mean over k micro-batches of `batch` (leaves [B, ...]), taken one at a time
  (lax.scan); `carry` (the spectral state) goes from one to the next; the loss and the
  outputs are averaged. k = 1 takes the gradient of the whole batch.
  -> (grads, loss, carry, outputs)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    (loss, (carry, outputs)), grads = grad_fn(params, carry, batch)
    return grads, loss, carry, outputs

  def add_micro_batch(totals, micro):
    carry, sums = totals
    (loss, (carry, outputs)), grads = grad_fn(params, carry, micro)
    return (carry, jax.tree.map(jnp.add, sums, (grads, loss, outputs))), None

  micro = micro_batches(batch, k, mesh)
  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(grad_fn, params, carry, first)  # ((loss, (carry, outputs)), grads)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                       (shapes[1], shapes[0][0], shapes[0][1][1]))
  (carry, sums), _ = jax.lax.scan(add_micro_batch, (carry, zeros), micro)
  grads, loss, outputs = jax.tree.map(lambda x: x / k, sums)
  return grads, loss, carry, outputs


def micro_batches(tree, k: int, mesh):
  """Leaves [B, ...] -> [k, B/k, ...]: micro-batch j holds rows j, k + j, 2k + j, ..., so
  each device's rows split evenly among the k and every micro-batch is spread over all
  devices like the batch."""
  split = lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(jax.tree.map(split, tree),
                                          NamedSharding(mesh, P(None, 'data')))
