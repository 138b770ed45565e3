"""End-to-end time of an N-sample FID at a config's resolution, as --mode=eval
runs it: G's samples, Inception-v3 (resize to 299, float32 at highest
precision), and the statistics on the host.

  python benchmarks/fid_speed.py --config=configs/imagenet128.py             # 50,000
  python benchmarks/fid_speed.py --config=configs/quickstart.py --num_samples=64

The weights are random (an untrained G of the config, a random Inception):
the work, and so the time, is the same as with trained ones. The reference
statistics are of random features, so the FID itself means nothing. Compiling
is timed apart, on one batch, before the timed run.
"""
import datetime
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sagan_jax import evaluation, inception, sampling, train, train_state, weights
from sagan_jax.models import make_models
from sagan_jax.update import Update

config_flags.DEFINE_config_file('config', None, 'Config whose G and image size to time.')
flags.DEFINE_integer('num_samples', 50_000, 'Samples in the timed FID.')
flags.DEFINE_integer('batch_size', 256, 'Images per G and per Inception call.')
flags.DEFINE_string('out', '', 'Also write the result to this JSON file.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  mesh = train.make_mesh()
  generator, discriminator = make_models(config)
  state = Update(config, generator, discriminator, mesh).init(config.seed)
  variables = train_state.generator_variables(state, ema=True)
  weights_path = os.path.join(tempfile.mkdtemp(), 'random_inception.npz')
  weights.save(inception.random_params(), weights_path)
  extractor = evaluation.Extractor('inception', weights_path, mesh, config.num_classes)
  rng = np.random.default_rng(0)
  reference = {'mu': np.zeros(2048), 'sigma': np.eye(2048), 'diversity': 1.0,
               'features': rng.normal(size=(evaluation.KID_FEATURES, 2048))}
  images = sampling.ImageSampler(generator, mesh)
  run = lambda num: evaluation.evaluate(images, variables, config, extractor, reference, num,
                                        FLAGS.batch_size)
  start = time.perf_counter()
  run(FLAGS.batch_size)  # compiles G and Inception for this batch size
  compile_s = time.perf_counter() - start
  result = run(FLAGS.num_samples)
  summary = {
      'date': datetime.date.today().isoformat(),
      'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'image_size': config.image_size, 'ch': config.ch, 'batch_size': FLAGS.batch_size,
      'num_samples': FLAGS.num_samples, 'compile_and_first_batch_s': compile_s,
      'seconds': result['seconds'],
      'generate_images_per_s': result['generate_images_per_s'],
      'inception_and_statistics_images_per_s': result['score_images_per_s']}
  print(json.dumps(summary))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
