"""TFDS ArrayRecord -> Grain -> numpy uint8 batches for the train step.

Training reads examples by index (`tfds` random-access data sources over the
ArrayRecord files TFDS writes), so the data position is a count:

- The global stream is endless: its element k is example perm_e(k mod N) of
  epoch e = k // N, where perm_e is Grain's shuffle of the N indices of the
  split, seeded by config.seed and e. An epoch may end inside a batch.
- Global batch j is elements [j*B, (j+1)*B) of the stream, B = config.batch_size;
  each process decodes only the rows of it that its devices hold.
- The position saved with every checkpoint is the number of stream elements
  consumed, so a resume continues the same global batches on any number of
  processes and devices.

Images stay uint8 on the host; the train step scales them to [-1, 1] on the
device. Each batch holds one real batch per D step:
{'image': uint8 [num_d_steps, B_process, S, S, 3], 'label': int32 [num_d_steps, B_process]}.
Datasets without labels (CelebA, LSUN) train unconditionally: every label is 0.

config.dataset is a TFDS name (decoded and resized while training),
'resized:NAME' (the copy of NAME that `python -m sagan_jax.prepare` wrote at
config.image_size), or 'folder:ROOT' (ROOT/<class>/<image>, prepared into the
TFDS data dir on first use).
"""
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')  # no GCE metadata probe when offline

import grain
import jax
import numpy as np
from absl import flags, logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import tensorflow_datasets as tfds

from sagan_jax import logs, resized_dataset
from sagan_jax.preprocessing import preprocess
from sagan_jax.embedded_datasets import SaganDigits, SaganShapes  # registers them with TFDS

ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD
EMBEDDED = (SaganShapes.name, SaganDigits.name)
MANUAL_FILES = {'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'}


class DataError(ValueError):
  """A dataset that cannot be read; the message says what is missing and the fix."""


def _data_dir(config) -> str:
  return config.data_dir or os.path.expanduser('~/tensorflow_datasets')


def _how_to_prepare(config) -> str:
  name, data_dir = config.dataset, _data_dir(config)
  if name.split('/')[0] in MANUAL_FILES:
    return (f'put {MANUAL_FILES[name]} in {data_dir}/downloads/manual/ and run once: '
            f'tfds build {name} --file_format=array_record --data_dir={data_dir}')
  return (f'run once, on a machine with network access: tfds build {name} '
          f'--file_format=array_record --data_dir={data_dir}')


RESIZED = 'resized:'


def _builder(config) -> tfds.core.DatasetBuilder:
  name, data_dir = config.dataset, _data_dir(config)
  if name.startswith(resized_dataset.FOLDER):
    root = name[len(resized_dataset.FOLDER):]
    if not epath.Path(root).is_dir() or not resized_dataset.folder_classes(root):
      raise DataError(f'config.dataset={name!r}: {root} must be a folder of class folders, '
                      'ROOT/<class>/<image>')
    builder = resized_dataset.builder(name, config.image_size, data_dir)
    _prepare(builder, f'the image folder {root}')  # local files only
    return builder
  if name.startswith(RESIZED):
    builder = resized_dataset.builder(name[len(RESIZED):], config.image_size, data_dir)
    if not builder.is_prepared():
      versions = epath.Path(builder.data_dir).parent
      older = sorted(v.name for v in versions.iterdir()) if versions.exists() else []
      found = (f' (the copy there is of version {", ".join(older)}, written before the input '
               f'read ArrayRecord files; this program reads version {builder.version})'
               if older else '')
      raise DataError(f'no {config.image_size}px copy of {name[len(RESIZED):]} in {data_dir}'
                      f'{found}: run once: python -m sagan_jax.prepare '
                      f'--dataset={name[len(RESIZED):]} --image_size={config.image_size} '
                      f'--data_dir={data_dir}')
    return builder
  if name in EMBEDDED:
    builder = tfds.builder(name, data_dir=config.data_dir or None, file_format=ARRAY_RECORD)
    try:
      _prepare(builder, f'{name} (about 10 s)',
               download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except FileNotFoundError as e:  # the digits' package is missing: the message has the fix
      raise DataError(f'config.dataset={name!r}: {e}') from None
    return builder
  builder = tfds.builder(name, data_dir=config.data_dir or None, try_gcs=False)
  if builder.is_prepared() and builder.info.file_format != ARRAY_RECORD:
    raise DataError(
        f'{name} in {data_dir} is in {builder.info.file_format.value} files, and training '
        f'reads ArrayRecord files by index: write a copy once with python -m sagan_jax.prepare '
        f'--dataset={name} --image_size={config.image_size} --data_dir={data_dir} and train '
        f'with --config.dataset=resized:{name} (it also spares decoding full-size images), or '
        f'rebuild it with tfds build {name} --file_format=array_record --data_dir={data_dir}')
  return builder


def _prepare(builder: tfds.core.DatasetBuilder, what: str, **kwargs) -> None:
  """Prepares a dataset once. Processes of one run that share the data dir may prepare
  it at the same time: each writes its own temporary copy, and every rename after the
  first finds the dataset there, which is as good (etils.epath raises FileExistsError,
  or os.rename's ENOTEMPTY when the other copy lands between its check and the rename).
  A builder made before another process's copy landed holds no splits: they are read
  from the copy."""
  if not builder.is_prepared():
    logging.info('Preparing %s in %s (once).', what, builder.data_dir)
    logs.import_tensorflow_quietly()  # TFDS writes a dataset with TensorFlow
    try:
      builder.download_and_prepare(**kwargs)
    except OSError:
      if not builder.is_prepared():
        raise
  if not builder.info.splits:
    builder.info.read_from_directory(builder.data_dir)


def get_builder(config) -> tfds.core.DatasetBuilder:
  """The dataset's builder, with the embedded dataset and image folders prepared."""
  try:
    builder = _builder(config)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'config.dataset={config.dataset!r} is not a TFDS dataset; use a name from '
                    f'tfds.list_builders(), e.g. cifar10, imagenet2012, celeb_a, lsun/bedroom, '
                    f'or one of the embedded {EMBEDDED}, or folder:ROOT for a folder of '
                    'images') from None
  features = builder.info.features
  classes = features['label'].num_classes if 'label' in features else 1
  if classes != config.num_classes:
    raise DataError(f'config.num_classes={config.num_classes} but {config.dataset} has '
                    f'{classes} class{"es" if classes > 1 else ""}: set --config.num_classes='
                    f'{classes}')
  return builder


def data_source(config, split: str):
  """Random access to the split's examples, {'image': bytes of an encoded image (or an
  array of raw pixels), 'label': ...}: the caller decodes the images
  (preprocessing.preprocess), where that runs in parallel."""
  builder = get_builder(config)
  try:
    return builder.as_data_source(split=split,
                                  decoders=resized_dataset.encoded_images(builder))
  except (NotImplementedError, AssertionError, FileNotFoundError):  # not prepared
    raise DataError(f'{config.dataset} is not prepared in {_data_dir(config)}: '
                    f'{_how_to_prepare(config)}') from None


class _Examples(grain.MapDataset):
  """The decoded global stream: element k is example `indices[k]` (the shuffled,
  repeated example indices) read from `source` and preprocessed, flipped left-right
  (config.random_flip) by a coin seeded with the seed, the epoch and the example's
  index. An undecodable record is replaced by the stream's next one and logged."""

  def __init__(self, indices: grain.MapDataset, source, config):
    super().__init__(indices)
    self._source, self._size, self._seed = source, config.image_size, config.seed
    self._flip, self._n = config.random_flip, len(source)
    self._skipped = 0

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    for offset in range(100):
      index = int(self._parent[k + offset])
      try:
        example = preprocess(self._source[index], self._size)
        break
      except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
        self._skipped += 1
        logging.warning('Skipped the undecodable example %d of the dataset (%s: %s): %d '
                        'skipped so far by this process.', index, type(e).__name__, e,
                        self._skipped)
    else:
      raise DataError(f'100 examples in a row from stream position {k} do not decode')
    epoch = (k + offset) // self._n
    if self._flip and np.random.default_rng([self._seed, epoch, index]).random() < 0.5:
      example['image'] = np.ascontiguousarray(example['image'][:, ::-1])
    return example


class _ProcessRows(grain.MapDataset):
  """This process's part of every global batch from stream element `start` on:
  element i is row rows[i % len(rows)] of global batch i // len(rows)."""

  def __init__(self, stream: grain.MapDataset, start: int, global_batch: int, rows):
    super().__init__(stream)
    self._start, self._global_batch, self._rows = start, global_batch, list(rows)

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    j, r = divmod(i, len(self._rows))
    return self._parent[self._start + j * self._global_batch + self._rows[r]]


def process_rows(mesh, global_batch: int) -> list[int]:
  """The rows of a global batch that this process's devices hold (split over 'data')."""
  sharding = NamedSharding(mesh, P('data'))
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(global_batch)[index[0]])
  return sorted(rows)


def data_workers(config) -> int:
  """Grain's decoding processes: config.data_workers, or for -1 none on the CPU
  backend (its cores run the model) and half the host's cores (at most 32) with an
  accelerator."""
  if config.data_workers >= 0:
    return config.data_workers
  return 0 if jax.default_backend() == 'cpu' else min((os.cpu_count() or 2) // 2, 32)


class TrainIterator:
  """This process's rows of every global batch, as numpy. position() is three
  integers (stream elements consumed, and the seed and dataset size to check them
  against); restore() continues the same global batches on any process count."""

  def __init__(self, config, source, rows):
    self.config, self.source, self.rows = config, source, rows
    self.consumed = 0  # elements of the global stream in the batches returned so far
    self._iterator = None  # opened at the first batch, from `consumed`
    self._workers = data_workers(config)

  def _open(self):
    c = self.config
    indices = grain.MapDataset.range(len(self.source)).seed(c.seed).shuffle().repeat()
    rows = _ProcessRows(_Examples(indices, self.source, c), self.consumed, c.batch_size,
                        self.rows)
    batches = rows.batch(len(self.rows)).batch(c.num_d_steps)
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    if self._workers:
      if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults here)
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._iterator = iter(ds)

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      self._open()
    batch = next(self._iterator)
    if self._workers:  # out of Grain's shared memory, which it frees once unreferenced
      batch = {k: np.array(v) for k, v in batch.items()}
    self.consumed += self.config.batch_size * self.config.num_d_steps
    return batch

  def position(self) -> dict:
    return {'consumed': self.consumed, 'seed': self.config.seed, 'examples': len(self.source)}

  def restore(self, position: dict) -> None:
    saved = (position['seed'], position['examples'])
    if saved != (self.config.seed, len(self.source)):
      raise DataError(f'the checkpoint\'s data position is in the stream of seed {saved[0]} '
                      f'over {saved[1]} examples; this run\'s has seed {self.config.seed} over '
                      f'{len(self.source)}, another dataset: use a new --workdir')
    self.close()
    self.consumed = position['consumed']

  def close(self):
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def create_train_iterator(config, mesh, split: str = 'train') -> TrainIterator:
  """This process's rows of every global batch of the split's stream, from its start."""
  source = data_source(config, split)
  if len(source) < config.batch_size:
    raise DataError(f'{config.dataset} has {len(source)} examples in its {split} split, fewer '
                    f'than one batch (config.batch_size={config.batch_size}): lower '
                    f'--config.batch_size or use a larger dataset')
  return TrainIterator(config, source, process_rows(mesh, config.batch_size))
