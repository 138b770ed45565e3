"""Writes a copy of a dataset cropped and resized for training, once.

  python -m sagan_jax.prepare --dataset=imagenet2012 --image_size=128 --data_dir=DIR
  python -m sagan_jax.prepare --dataset=folder:/data/my_images --image_size=64 --data_dir=DIR

Then train with --config.dataset=resized:imagenet2012 (or folder:/data/my_images)
and the same --config.image_size and --config.data_dir. The source TFDS dataset
must be prepared in DIR already, in ArrayRecord or in TFRecord files (for
imagenet2012: `tfds build imagenet2012 --data_dir=DIR` with the archives in
DIR/downloads/manual/): this also converts a TFRecord dataset for training. The
copy is written in ArrayRecord files, its images decoded and resized by a process
per core.
"""
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', None, 'A prepared TFDS dataset name, or folder:ROOT.')
flags.DEFINE_integer('image_size', None, 'Side of the square images written.')
flags.DEFINE_string('data_dir', os.path.expanduser('~/tensorflow_datasets'), 'TFDS data dir.')
flags.mark_flags_as_required(['dataset', 'image_size'])


def main(argv):
  del argv
  from sagan_jax import input_pipeline, resized_dataset  # input_pipeline registers sagan_shapes
  del input_pipeline
  builder = resized_dataset.builder(FLAGS.dataset, FLAGS.image_size, FLAGS.data_dir)
  builder.download_and_prepare()
  logging.info('Wrote %s: %s', builder.data_dir,
               {k: v.num_examples for k, v in builder.info.splits.items()})


if __name__ == '__main__':
  app.run(main)
