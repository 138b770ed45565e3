"""Proof of learning and evaluation speed on the embedded dataset: the
classifier metrics of the untrained generator (step 0, the same initial state
training starts from) and of every checkpoint in --workdir, with generation and
feature-extraction rates.

  python -m sagan_jax.classifier                      # once
  python main.py --config=configs/quickstart.py --workdir=/tmp/sagan_quickstart
  python benchmarks/evaluation.py --workdir=/tmp/sagan_quickstart --out=result.json
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sagan_jax import (checkpoint, classifier, evaluation, sampling, train,  # noqa: E402
                       train_state)
from sagan_jax.models import make_models  # noqa: E402
from sagan_jax.update import Update

flags.DEFINE_string('workdir', None, 'A workdir of a quickstart run.')
flags.DEFINE_integer('num_samples', 10_000, 'Samples per evaluation.')
flags.DEFINE_string('out', '', 'Also write the results to this JSON file.')
flags.DEFINE_integer('inception_images', 0, 'Also time Inception-v3 (random weights: the speed '
                     'does not depend on them) on this many 128x128 images.')
FLAGS = flags.FLAGS


def inception_speed(mesh, num: int) -> dict:
  """images/s through resize-to-299 + Inception-v3, float32 at highest precision."""
  import time
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sagan_jax import inception
  model = inception.InceptionV3()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 299, 299, 3), np.float32))['params']
  apply = jax.jit(lambda p, x: model.apply({'params': p}, inception.preprocess(x)),
                  in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))))
  batch = -(-min(num, 64) // mesh.size) * mesh.size
  images = np.random.default_rng(0).integers(0, 256, (batch, 128, 128, 3), np.uint8)
  jax.block_until_ready(apply(params, images))  # compile
  start = time.perf_counter()
  for _ in range(-(-num // batch)):
    out = apply(params, images)
  jax.block_until_ready(out)
  done = -(-num // batch) * batch
  return {'inception_images': done, 'inception_images_per_s': done / (time.perf_counter() - start)}


def main(argv):
  del argv
  import jax
  mesh = train.make_mesh()
  manager = checkpoint.make_manager(FLAGS.workdir)
  steps = sorted(manager.all_steps())
  _, config, _ = checkpoint.restore_generator(FLAGS.workdir, mesh, steps[-1])
  generator, discriminator = make_models(config)
  extractor = evaluation.Extractor('classifier', classifier.SHIPPED, mesh,
                                   config.num_classes)
  cache = evaluation.reference_dir(config, FLAGS.workdir)
  reference, class_ref, classes = evaluation.references(  # intra-class: every class
      config, extractor, FLAGS.num_samples, cache, 'all')
  images = sampling.ImageSampler(generator, mesh)
  initial = Update(config, generator, discriminator, mesh).init(config.seed)
  results = []
  for step in [0] + steps:
    if step == 0:
      # As training does before its step-0 grid: the EMA G with statistics of its own.
      variables = train_state.generator_variables(
          train.EMAStatistics(config, generator, mesh)(initial), ema=True)
    else:
      variables, _, _ = checkpoint.restore_generator(FLAGS.workdir, mesh, step)
    result = evaluation.evaluate(images, variables, config, extractor, reference,
                                 FLAGS.num_samples, class_ref=class_ref, classes=classes)
    results.append({'step': step, **result})
    print(json.dumps(results[-1]))
  if FLAGS.inception_images:
    results.append(inception_speed(mesh, FLAGS.inception_images))
    print(json.dumps(results[-1]))
  summary = {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
             'host_cpus': os.cpu_count(), 'num_samples': FLAGS.num_samples, 'results': results}
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(summary, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
