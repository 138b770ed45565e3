"""A small classifier of the embedded dataset: a sample-quality metric that
needs nothing downloaded (class accuracy of conditional samples, and a Frechet
distance in its 128-d feature space).

  python -m sagan_jax.classifier

trains it (about a minute on 2 CPU cores: 300 steps, test accuracy 99.9%) and
writes SHIPPED, the weights that evaluation uses by default: they ship with the
project (566 KB), so evaluation needs no extra command. The embedded dataset is
generated from fixed seeds, so the same weights serve every machine.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from flax import linen as nn

from sagan_jax import shapes_dataset, weights

FEATURES = 128


class Classifier(nn.Module):
  """uint8 images [N, 32, 32, 3] -> (features [N, 128], logits [N, num_classes])."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32) / 127.5 - 1.0
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    features = jnp.mean(nn.relu(nn.Conv(FEATURES, (3, 3))(x)), axis=(1, 2))
    return features, nn.Dense(self.num_classes)(features)


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets',
                       'sagan_shapes_classifier.npz')


def save(params, path: str) -> None:
  weights.save(params, path)


def load(path: str) -> dict:
  if not epath.Path(path).exists():
    raise FileNotFoundError(f'no classifier weights at {path}: pass the file that python -m '
                            f'sagan_jax.classifier --out=FILE wrote, or leave the option '
                            f'empty for the shipped ones')
  return weights.load(path)


def split_arrays(split: str):
  """All of a split of the embedded dataset as uint8 images and int labels, generated
  (the same examples as its TFDS split, in the generator's order)."""
  images, labels = zip(*shapes_dataset.generate(*shapes_dataset.SPLITS[split]))
  return np.stack(images), np.array(labels, np.int32)


def train(steps: int = 300, batch_size: int = 64, seed: int = 0):
  """Trains on the train split; returns (params, test accuracy)."""
  images, labels = split_arrays('train')
  model, tx = Classifier(), optax.adam(1e-3)
  params = model.init(jax.random.PRNGKey(seed), images[:1])['params']
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply({'params': p}, x)[1], y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for i in range(steps):
    idx = rng.integers(0, len(images), batch_size)
    params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
    if (i + 1) % 250 == 0:
      logging.info('classifier step %d/%d, loss %.4f', i + 1, steps, float(loss))
  test_images, test_labels = split_arrays('test')
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x)[1])(params, test_images)
  return params, float((np.asarray(logits).argmax(-1) == test_labels).mean())


def main(argv):
  del argv
  flags_ = flags.FLAGS
  params, accuracy = train(flags_.steps)
  out = flags_.out or SHIPPED
  save(params, out)
  print(f'Wrote {out}; test accuracy {accuracy:.4f}')


if __name__ == '__main__':  # flags only here: main.py imports this module
  flags.DEFINE_string('out', '', 'Weights file (default: the shipped one, replaced).')
  flags.DEFINE_integer('steps', 300, 'Training steps of batch 64.')
  app.run(main)
