"""`sagan_shapes`: an embedded, class-conditional 32x32 RGB dataset (no download).

Ten classes of drawn shapes and textures. Position, size, stripe period and
both colours are random and independent of the class, so the class is in the
spatial structure alone: a GAN must learn shapes, and a person can tell the
classes apart in a sample grid. Examples are generated from fixed seeds, so
every machine prepares the same dataset. No TFDS here: its builder is in
embedded_datasets.py.
"""
import numpy as np

CLASS_NAMES = ('disc', 'square', 'triangle', 'ring', 'plus', 'x_cross',
               'h_stripes', 'v_stripes', 'd_stripes', 'checkerboard')
SIZE = 32
SPLITS = {'train': (10_000, 0), 'test': (1_000, 1)}  # split: (examples, seed)


def _mask(label: int, rng: np.random.Generator) -> np.ndarray:
  """Boolean [SIZE, SIZE] foreground of one example of class `label`."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
  cy, cx = rng.uniform(11, 21, size=2)
  r = rng.uniform(6, 10)  # shape radius
  dy, dx = yy - cy, xx - cx
  period = rng.uniform(5, 9)  # texture period
  phase = rng.uniform(0, period)
  name = CLASS_NAMES[label]
  if name == 'disc':
    return dy**2 + dx**2 <= r**2
  if name == 'square':
    return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
  if name == 'triangle':  # apex up
    return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
  if name == 'ring':
    d = np.sqrt(dy**2 + dx**2)
    return (d <= r) & (d >= 0.55 * r)
  if name == 'plus':
    arm = 0.3 * r
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
  if name == 'x_cross':
    arm = 0.3 * r * np.sqrt(2)
    box = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return box & ((np.abs(dy - dx) <= arm) | (np.abs(dy + dx) <= arm))
  if name == 'h_stripes':
    return (yy + phase) % period < period / 2
  if name == 'v_stripes':
    return (xx + phase) % period < period / 2
  if name == 'd_stripes':
    return (xx + yy + phase) % (1.4 * period) < 0.7 * period
  if name == 'checkerboard':
    return (((yy + phase) // (period / 2)) + ((xx + phase) // (period / 2))) % 2 == 0
  raise ValueError(label)


def make_example(label: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [SIZE, SIZE, 3] image: a bright shape on a dark background, mild noise."""
  mask = _mask(label, rng)[..., None]
  foreground = rng.uniform(0.45, 1.0, size=3)
  background = rng.uniform(0.0, 0.3, size=3)
  image = np.where(mask, foreground, background) + rng.normal(0, 0.03, (SIZE, SIZE, 3))
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def generate(num_examples: int, seed: int):
  """Yields (image, label), classes in turn, deterministically from `seed`."""
  rng = np.random.default_rng(seed)
  for i in range(num_examples):
    label = i % len(CLASS_NAMES)
    yield make_example(label, rng), label


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """A split as uint8 images [n, 32, 32, 3] and int32 labels [n], generated without
  TFDS: the examples of its TFDS split, in the same order."""
  images, labels = zip(*generate(*SPLITS[split]))
  return np.stack(images), np.array(labels, np.int32)


def colours(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The embedded dataset's two colours per image: (mean RGB in [0, 1] of the
  foreground and of the background [n, 6], whether the image has both [n]).
  Its foregrounds have every channel in [0.45, 1] and its backgrounds in
  [0, 0.3], so a pixel whose channel mean is above 0.375 is foreground."""
  x = images.astype(np.float32) / 255
  fg = (x.mean(-1) > 0.375)[..., None]  # [n, H, W, 1]
  count = lambda m: m.sum((1, 2))
  mean = lambda m: (x * m).sum((1, 2)) / np.maximum(count(m), 1)
  both = (count(fg) > 0) & (count(~fg) > 0)
  return np.concatenate([mean(fg), mean(~fg)], -1), both[:, 0]
