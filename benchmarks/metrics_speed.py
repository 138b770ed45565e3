"""The host statistics of one score() against a kept reference, before and after
evaluation kept the reference's k-NN radii and FID took the n x n route for n <= d.

  python benchmarks/metrics_speed.py

Random features stand in for real ones (the cost depends on the shapes only):
- precision/recall/density/coverage, whole and per class, of `--samples` classifier
  features (d = 128) against `--reference` real ones, 10 classes: radii computed at
  every score (before) against radii kept in the reference (after; the first score
  computes them);
- the FID of `--fid_samples` Inception features (d = 2,048) against the reference's
  moments: two 2048 x 2048 eigendecompositions (before) against the n x n route.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sagan_jax import metrics  # noqa: E402


def seconds(f, repeats=3):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f()
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--samples', type=int, default=5000)
  parser.add_argument('--reference', type=int, default=5000)
  parser.add_argument('--fid_samples', type=int, default=1000)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(args.reference, 128)), rng.normal(size=(args.samples, 128))
  real_labels, fake_labels = np.arange(args.reference) % 10, np.arange(args.samples) % 10
  radii, per_class = metrics.knn_radii(real, (metrics.K_PR, metrics.K_DC)), {}
  metrics.per_class_precision_recall(real, real_labels, fake, fake_labels, per_class)
  before = seconds(lambda: (metrics.precision_recall_density_coverage(real, fake),
                            metrics.per_class_precision_recall(real, real_labels, fake,
                                                               fake_labels)))
  after = seconds(lambda: (metrics.precision_recall_density_coverage(real, fake, real_radii=radii),
                           metrics.per_class_precision_recall(real, real_labels, fake,
                                                              fake_labels, per_class)))
  print(f'PRDC, {args.samples} vs {args.reference} (d = 128), whole and per class: '
        f'{before:.2f} s recomputing the radii, {after:.2f} s with them kept')
  inception = rng.normal(size=(args.fid_samples, 2048))
  mu, sigma = metrics.moments(rng.normal(size=(4096, 2048)))
  before = seconds(lambda: metrics.frechet_distance(*metrics.moments(inception), mu, sigma), 1)
  after = seconds(lambda: metrics.frechet_distance_to(inception, mu, sigma), 1)
  print(f'FID of {args.fid_samples} samples (d = 2048) against moments: {before:.2f} s through '
        f'2048 x 2048 eigendecompositions, {after:.2f} s through the n x n route')


if __name__ == '__main__':
  main()
