"""A small classifier of each embedded dataset: a sample-quality metric that
needs nothing downloaded (class accuracy of conditional samples, and a Frechet
distance, precision and recall in its 128-d feature space).

  python -m sagan_jax.classifier --dataset=sagan_digits

trains it (sagan_shapes: 300 steps; sagan_digits: 1,500 steps with shifts of up to
2 px; test accuracies in BENCHMARKS_LOG.md) and writes shipped(dataset), the weights
that evaluation uses by default: they ship with the project, so evaluation needs no
extra command. Both datasets are fixed (generated from fixed seeds, or packaged), so
the same weights serve every machine.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from flax import linen as nn

from sagan_jax import digits_dataset, shapes_dataset, weights

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


# The embedded datasets: name -> module with split_arrays(split) and CLASS_NAMES.
EMBEDDED = {'sagan_shapes': shapes_dataset, 'sagan_digits': digits_dataset}
# Each one's classifier: training steps, the largest random shift (pixels), and whether
# the learning rate decays to 0 (cosine).
TRAINING = {'sagan_shapes': (300, 0, False), 'sagan_digits': (2000, 2, True)}


def shipped(dataset: str) -> str:
  """The shipped weights of the embedded `dataset`'s classifier."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets',
                      f'{dataset}_classifier.npz')


SHIPPED = shipped('sagan_shapes')


def save(params, path: str) -> None:
  weights.save(params, path)


def load(path: str) -> dict:
  if not epath.Path(path).exists():
    raise FileNotFoundError(f'no classifier weights at {path}: pass the file that python -m '
                            f'sagan_jax.classifier --out=FILE wrote, or leave the option '
                            f'empty for the shipped ones')
  return weights.load(path)


def split_arrays(split: str, dataset: str = 'sagan_shapes'):
  """All of a split of an embedded dataset as uint8 images and int labels (the same
  examples as its TFDS split, in the same order), without TFDS."""
  return EMBEDDED[dataset].split_arrays(split)


def _shift(images, rng, max_shift: int):
  """Each image moved by up to max_shift pixels along each axis, zeros shifted in."""
  if not max_shift:
    return images
  n, s = len(images), images.shape[1]
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
  return np.stack([p[a:a + s, b:b + s] for p, a, b in zip(padded, dy, dx)])


def train(steps: int | None = None, batch_size: int = 64, seed: int = 0,
          dataset: str = 'sagan_shapes'):
  """Trains on the train split; returns (params, test accuracy)."""
  default_steps, max_shift, decay = TRAINING[dataset]
  steps = steps or default_steps
  images, labels = split_arrays('train', dataset)
  model = Classifier(len(EMBEDDED[dataset].CLASS_NAMES))
  tx = optax.adam(optax.cosine_decay_schedule(1e-3, steps) if decay else 1e-3)
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
    params, opt_state, loss = step(params, opt_state, _shift(images[idx], rng, max_shift),
                                   labels[idx])
    if (i + 1) % 250 == 0:
      logging.info('classifier step %d/%d, loss %.4f', i + 1, steps, float(loss))
  test_images, test_labels = split_arrays('test', dataset)
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x)[1])(params, test_images)
  return params, float((np.asarray(logits).argmax(-1) == test_labels).mean())


def main(argv):
  del argv
  flags_ = flags.FLAGS
  params, accuracy = train(flags_.steps or None, dataset=flags_.dataset)
  out = flags_.out or shipped(flags_.dataset)
  save(params, out)
  print(f'Wrote {out}; test accuracy {accuracy:.4f}')


if __name__ == '__main__':  # flags only here: main.py imports this module
  flags.DEFINE_enum('dataset', 'sagan_shapes', list(EMBEDDED), 'Which embedded dataset.')
  flags.DEFINE_string('out', '', 'Weights file (default: the shipped one, replaced).')
  flags.DEFINE_integer('steps', 0, 'Training steps of batch 64 (0: the dataset\'s default).')
  app.run(main)
