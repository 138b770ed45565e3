"""Images/s of the training input (Grain, input_pipeline.TrainIterator) on this
machine's CPU cores, for two paths:

- full-size: ImageNet-like 500x375 JPEGs decoded, centre-cropped and resized
  to --image_size (what training on raw `imagenet2012` does; the records are held
  in memory, so this times the decoding, not the disk);
- pre-resized: the `sagan_resized` copy (PNG at --image_size, ArrayRecord) that
  `python -m sagan_jax.prepare` writes, read from disk.
Both with --data_workers Grain processes (default: one per core), and the rate
of writing the pre-resized copy (a process per core).

The images are synthetic (smooth colour fields with noise, JPEG quality 90), made
in a temporary folder; nothing is downloaded.

  python benchmarks/input_pipeline.py --image_size=128 --num_images=1000
"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags
from PIL import Image

from sagan_jax import input_pipeline
from sagan_jax.config import default_config

FLAGS = flags.FLAGS
flags.DEFINE_integer('image_size', 128, 'Training resolution.')
flags.DEFINE_integer('num_images', 1000, 'Synthetic JPEGs written (two classes).')
flags.DEFINE_integer('batch_size', 64, 'Batch size of the timed pipelines.')
flags.DEFINE_integer('batches', 60, 'Timed batches per path, after 5 warm-up batches.')
flags.DEFINE_integer('data_workers', -2, 'Grain decoding processes (-2: one per core).')


def write_jpegs(root: str, n: int) -> list[str]:
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500] / 500.0
  paths = []
  for i in range(n):
    folder = os.path.join(root, f'class{i % 2}')
    os.makedirs(folder, exist_ok=True)
    a, b, c = rng.uniform(-1, 1, (3, 3))
    image = np.stack([np.sin(3 * a[k] * xx + 5 * b[k] * yy + c[k]) for k in range(3)], -1)
    image = (image * 100 + 128 + rng.normal(0, 10, image.shape)).clip(0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f'{i}.jpg'))
    Image.fromarray(image).save(paths[-1], quality=90)
  return paths


def images_per_second(iterator, batch_size: int, batches: int) -> float:
  for _ in range(5):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  size, cores = FLAGS.image_size, os.cpu_count()
  workers = cores if FLAGS.data_workers == -2 else FLAGS.data_workers
  with tempfile.TemporaryDirectory() as tmp:
    paths = write_jpegs(os.path.join(tmp, 'images'), FLAGS.num_images)
    config = default_config()
    config.update(dict(dataset=f'folder:{tmp}/images', data_dir=os.path.join(tmp, 'tfds'),
                       image_size=size, num_classes=2, batch_size=FLAGS.batch_size,
                       num_d_steps=1, data_workers=workers))
    rows = list(range(FLAGS.batch_size))
    jpegs = [{'image': open(path, 'rb').read(), 'label': 0} for path in paths]
    full = input_pipeline.TrainIterator(config, jpegs, rows)
    full_rate = images_per_second(full, FLAGS.batch_size, FLAGS.batches)
    full.close()
    start = time.perf_counter()
    input_pipeline.get_builder(config)  # writes the pre-resized copy
    prepare_rate = FLAGS.num_images / (time.perf_counter() - start)
    resized = input_pipeline.TrainIterator(
        config, input_pipeline.data_source(config, 'train'), rows)
    resized_rate = images_per_second(resized, FLAGS.batch_size, FLAGS.batches)
    resized.close()
  result = {
      'image_size': size, 'cores': cores, 'data_workers': workers,
      'full_size_jpeg_images_per_s': round(full_rate), 'per_core': round(full_rate / cores),
      'pre_resized_images_per_s': round(resized_rate), 'pre_resized_per_core': round(
          resized_rate / cores),
      'prepare_images_per_s': round(prepare_rate),
      'cores_for_3000_images_per_s': {'full_size': round(3000 / (full_rate / cores), 1),
                                      'pre_resized': round(3000 / (resized_rate / cores), 1)},
  }
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
