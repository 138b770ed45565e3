"""Class-conditional sample grids from a generator."""
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image


def grid_latents(config, seed: int):
  """Fixed z and labels for a grid: one row per class, `samples_per_class` columns."""
  rows = min(config.sample_classes, config.num_classes)
  z = jax.random.normal(jax.random.PRNGKey(seed), (rows * config.samples_per_class, config.z_dim))
  labels = jnp.repeat(jnp.arange(rows, dtype=jnp.int32), config.samples_per_class)
  return z, labels


def to_uint8_device(images) -> jax.Array:
  """[-1, 1] -> uint8 [0, 255], on the device."""
  return jnp.clip(jnp.round((images + 1) * 127.5), 0, 255).astype(jnp.uint8)


def to_uint8(images) -> np.ndarray:
  return np.asarray(to_uint8_device(images))


class ImageSampler:
  """G in inference mode -> uint8 images, compiled once: (variables, z, y) with
  the batch split over the mesh (padded to a multiple of its devices), the
  images gathered to every process."""

  def __init__(self, generator, mesh):
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    self.mesh = mesh
    self.program = jax.jit(lambda v, z, y: to_uint8_device(generator.apply(v, z, y, train=False)),
                          in_shardings=(replicated, split, split), out_shardings=replicated)

  def __call__(self, variables, z, y) -> np.ndarray:
    n, pad = z.shape[0], -z.shape[0] % self.mesh.size
    padding = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return np.asarray(self.program(variables, padding(z), padding(y)))[:n]


def make_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """uint8 images [rows * cols, H, W, 3], row-major -> one image with 1-px white borders."""
  n, h, w = images.shape[:3]
  cols = n // rows
  pad = np.full((rows, cols, h + 2, w + 2, 3), 255, np.uint8)
  pad[:, :, 1:-1, 1:-1] = images.reshape(rows, cols, h, w, 3)
  return pad.transpose(0, 2, 1, 3, 4).reshape(rows * (h + 2), cols * (w + 2), 3)


def save_png(image: np.ndarray, path, scale: int = 1) -> None:
  """Writes uint8 [H, W, 3] as PNG (local or gs:// path), enlarged `scale` times; on
  a pod, where every process has the image, process 0 writes it."""
  if jax.process_index() != 0:
    return
  image = Image.fromarray(image)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  with epath.Path(path).open('wb') as f:
    image.save(f, format='PNG')


def save_grid(images: np.ndarray, rows: int, path, scale: int = 2) -> np.ndarray:
  """Writes `images` as one grid PNG (see make_grid); returns the grid."""
  grid = make_grid(images, rows)
  save_png(grid, path, scale)
  return grid


def latents(key, n: int, z_dim: int, truncation: float = 0.0):
  """z [n, z_dim] ~ N(0, 1); with truncation t > 0, every |z_i| > t is redrawn
  (the truncation trick), i.e. z is normal truncated to [-t, t]."""
  if truncation > 0:
    return jax.random.truncated_normal(key, -truncation, truncation, (n, z_dim))
  return jax.random.normal(key, (n, z_dim))


def random_batch(key, batch_size: int, config):
  """z ~ N(0, 1) [B, z_dim] and uniformly random classes [B]."""
  z_key, y_key = jax.random.split(key)
  return (jax.random.normal(z_key, (batch_size, config.z_dim)),
          jax.random.randint(y_key, (batch_size,), 0, config.num_classes))


def generator_forward(config, generator, mesh, variables, z, y, mutable):
  """G in training mode. BN statistics are over the global batch, or with
  `bn_per_device` over each device's part (the statistics returned are then
  the mean over devices)."""
  if not config.bn_per_device:
    return generator.apply(variables, z, y, train=True, mutable=mutable)

  def local(variables, z, y):  # one device's z [B / devices, z_dim]
    images, new = generator.apply(variables, z, y, train=True, mutable=mutable)
    return images, dict(new, batch_stats=jax.lax.pmean(new['batch_stats'], 'data'))

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                       out_specs=(P('data'), P()))(variables, z, y)


def ema_statistics_key(seed: int, step: int):
  """The key of the batches that measure the EMA G's statistics at `step` (seed + 1 is
  the grids' noise): from the seed and the step alone, so a resumed run measures
  what an uninterrupted one would."""
  return jax.random.fold_in(jax.random.PRNGKey(seed + 2), step)


class StandingStatistics:
  """(G's variables, key) -> the same variables with batch-norm statistics that
  belong to their weights: the mean over `num_batches` generated batches
  (random z and classes, batch i from fold_in(key, i)) of each batch's
  statistics in training mode, measured as training measures them (global
  batch, or per device with bn_per_device). BigGAN's "standing statistics";
  the EMA generator's statistics (train.py). Compiled once, on all devices."""

  def __init__(self, config, generator, mesh, num_batches: int, batch_size: int):
    one_batch = generator.clone(bn_momentum=0.0)  # stored statistics = this batch's
    batch_size = -(-batch_size // mesh.size) * mesh.size
    per_example, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())

    def statistics(variables, key):
      def add_batch(i, total):
        z, y = jax.lax.with_sharding_constraint(
            random_batch(jax.random.fold_in(key, i), batch_size, config), per_example)
        _, new = generator_forward(config, one_batch, mesh, variables, z, y, ['batch_stats'])
        return jax.tree.map(jnp.add, total, new['batch_stats'])
      zeros = jax.tree.map(jnp.zeros_like, variables['batch_stats'])
      total = jax.lax.fori_loop(0, num_batches, add_batch, zeros)
      return jax.tree.map(lambda x: x / num_batches, total)

    self.batch_size = batch_size
    self._statistics = jax.jit(statistics, in_shardings=(replicated, replicated),
                               out_shardings=replicated)

  def __call__(self, variables, key) -> dict:
    return dict(variables, batch_stats=self._statistics(variables, key))
