"""Class-conditional sample grids from a generator."""
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image


def grid_latents(config, seed: int):
  """Fixed z and labels for a grid: one row per class, `samples_per_class` columns."""
  rows = min(config.sample_classes, config.num_classes)
  z = jax.random.normal(jax.random.PRNGKey(seed), (rows * config.samples_per_class, config.z_dim))
  labels = jnp.repeat(jnp.arange(rows, dtype=jnp.int32), config.samples_per_class)
  return z, labels


def generate(generator, params, batch_stats, spectral, z, labels):
  """Images in [-1, 1] with G in inference mode (moving BN statistics, u left as is)."""
  return generator.apply({'params': params, 'batch_stats': batch_stats, 'spectral': spectral},
                         z, labels, train=False)


def to_uint8(images) -> np.ndarray:
  return np.asarray(jnp.clip(jnp.round((images + 1) * 127.5), 0, 255), dtype=np.uint8)


def save_grid(images: np.ndarray, rows: int, path, scale: int = 2) -> None:
  """Writes uint8 images [rows * cols, S, S, 3] as one PNG, row-major (local or gs:// path)."""
  n, s = images.shape[0], images.shape[1]
  cols = n // rows
  pad = np.full((rows, cols, s + 2, s + 2, 3), 255, np.uint8)  # 1-px white border
  pad[:, :, 1:-1, 1:-1] = images.reshape(rows, cols, s, s, 3)
  grid = pad.transpose(0, 2, 1, 3, 4).reshape(rows * (s + 2), cols * (s + 2), 3)
  image = Image.fromarray(grid)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  with epath.Path(path).open('wb') as f:
    image.save(f, format='PNG')
