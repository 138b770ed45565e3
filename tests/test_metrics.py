"""FID, IS and KID against closed forms and plain NumPy/SciPy references."""
import warnings

import numpy as np
import pytest
import scipy.linalg

from sagan_jax import metrics


def test_frechet_distance_of_gaussians_with_known_moments():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
  # Diagonal covariances: sum_i (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2).
  expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
  assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
  # A rotation of both changes nothing; equal Gaussians are at distance 0.
  q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
  rotated = metrics.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2,
                                     q @ np.diag(s2) @ q.T)
  assert rotated == pytest.approx(expected, rel=1e-10)
  c = q @ np.diag(s1) @ q.T
  assert abs(metrics.frechet_distance(mu1, c, mu1, c)) < 1e-10


def scipy_fid(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


@pytest.mark.parametrize('rank', [64, 20, 3])  # full rank, and near-singular ones
def test_frechet_distance_matches_scipy_sqrtm(rank):
  rng = np.random.default_rng(rank)
  f1 = rng.normal(size=(200, rank)) @ rng.normal(size=(rank, 64))
  f2 = rng.normal(size=(300, rank)) @ rng.normal(size=(rank, 64)) + 0.5
  f1 += 1e-6 * rng.normal(size=f1.shape)  # near-singular, not exactly singular
  mu1, s1 = metrics.moments(f1)
  mu2, s2 = metrics.moments(f2)
  np.testing.assert_allclose(mu1, f1.mean(0))
  np.testing.assert_allclose(s1, np.cov(f1, rowvar=False))
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
      scipy_fid(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize('n1, n2', [(30, 50), (5, 300), (200, 300)])  # n < d, mixed, n > d
def test_frechet_distance_of_features_equals_the_moments_route(n1, n2):
  rng = np.random.default_rng(n1)
  f1 = rng.normal(size=(n1, 64)) @ rng.normal(size=(64, 64))
  f2 = rng.normal(size=(n2, 64)) * 2 + 0.5
  expected = scipy_fid(*metrics.moments(f1), *metrics.moments(f2))
  assert metrics.frechet_distance_of_features(f1, f2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('n', [8, 64, 200])  # n < d (the n x n route), n = d, n > d
def test_frechet_distance_to_moments_equals_the_moments_route(n):
  rng = np.random.default_rng(n)
  features = rng.normal(size=(n, 64)) @ rng.normal(size=(64, 64))
  mu, sigma = metrics.moments(rng.normal(size=(300, 64)) * 2 + 0.5)
  expected = scipy_fid(*metrics.moments(features), mu, sigma)
  assert metrics.frechet_distance_to(features, mu, sigma) == pytest.approx(expected, rel=1e-6)


def test_inception_score_matches_numpy_reference():
  logits = np.random.default_rng(1).normal(scale=3, size=(1000, 10))
  scores = []
  for part in np.split(logits, 10):
    p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
    p_y = p.mean(0)
    scores.append(np.exp(np.mean([np.sum(pi * np.log(pi / p_y)) for pi in p])))
  mean, std = metrics.inception_score(logits, splits=10)
  assert (mean, std) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)
  # Sure, distinct classes: the score is the class count; one class: 1.
  assert metrics.inception_score(np.eye(10)[np.arange(1000) % 10] * 100)[0] == pytest.approx(10)
  assert metrics.inception_score(np.tile([100.0, 0, 0], (100, 1)), splits=2)[0] == pytest.approx(1)
  # Fewer samples than parts (a tiny evaluation): one sample per part, no empty part.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert metrics.inception_score(np.eye(4) * 100) == pytest.approx((1, 0))


def test_kid_matches_numpy_reference():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(60, 8)), rng.normal(0.3, 1, size=(50, 8))
  kernel = lambda a, b: (a @ b.T / 8 + 1) ** 3
  # One subset holding everything: the unbiased MMD^2 written out term by term.
  m = 50
  sub = np.random.default_rng(0)
  a, b = x[sub.choice(60, m, replace=False)], y[sub.choice(50, m, replace=False)]
  expected = (sum(kernel(a[i:i + 1], a[j:j + 1])[0, 0] for i in range(m) for j in range(m)
                  if i != j) / (m * (m - 1))
              + sum(kernel(b[i:i + 1], b[j:j + 1])[0, 0] for i in range(m) for j in range(m)
                    if i != j) / (m * (m - 1))
              - 2 * kernel(a, b).mean())
  mean, std = metrics.kernel_inception_distance(x, y, subsets=1, subset_size=100, seed=0)
  assert mean == pytest.approx(expected, rel=1e-10) and std == 0
  same = rng.normal(size=(400, 8))
  assert abs(metrics.kernel_inception_distance(same[:200], same[200:], 10, 200)[0]) < 0.05


def test_within_class_diversity_is_the_mean_pairwise_distance_per_class():
  rng = np.random.default_rng(0)
  x, labels = rng.normal(size=(30, 5)), np.repeat([0, 1, 2], 10)
  expected = np.mean([np.mean([np.linalg.norm(a - b) for i, a in enumerate(x[labels == c])
                               for j, b in enumerate(x[labels == c]) if i != j])
                      for c in range(3)])
  assert np.isclose(metrics.within_class_diversity(x, labels), expected)
  # Each class one point repeated: no diversity, however far apart the classes are.
  apart = np.repeat(np.eye(3) * 100, 4, 0)
  assert metrics.within_class_diversity(apart, np.repeat([0, 1, 2], 4)) < 1e-5
  assert np.isnan(metrics.within_class_diversity(x[:3], np.arange(3)))  # no class has two
  # Unit-variance Gaussians in d dims: E|a - b| ~ sqrt(2 d).
  big = rng.normal(size=(4000, 64))
  assert abs(metrics.within_class_diversity(big, np.arange(4000) % 2) / np.sqrt(128) - 1) < 0.02


def brute_force_prdc(real, fake, k_pr=3, k_dc=5):
  """The four definitions written out sample by sample, with loops."""
  def radius(x, i, k):
    return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]
  dist = lambda a, b: np.linalg.norm(a - b)
  real_pr = [radius(real, i, k_pr) for i in range(len(real))]
  fake_pr = [radius(fake, j, k_pr) for j in range(len(fake))]
  real_dc = [radius(real, i, k_dc) for i in range(len(real))]
  precision = np.mean([any(dist(f, r) <= real_pr[i] for i, r in enumerate(real)) for f in fake])
  recall = np.mean([any(dist(r, f) <= fake_pr[j] for j, f in enumerate(fake)) for r in real])
  density = np.sum([[dist(f, r) <= real_dc[i] for i, r in enumerate(real)] for f in fake]) / (
      k_dc * len(fake))
  coverage = np.mean([any(dist(f, r) <= real_dc[i] for f in fake) for i, r in enumerate(real)])
  return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def test_precision_recall_density_coverage_match_the_definitions_sample_by_sample():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(60, 5)), rng.normal(0.4, 1.3, size=(45, 5))
  got = metrics.precision_recall_density_coverage(real, fake)
  want = brute_force_prdc(real, fake)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12), name
  # Chunked: the same numbers when the rows are taken a few at a time.
  assert metrics.knn_radii(real, 3, chunk=7) == pytest.approx(metrics.knn_radii(real, 3))
  # Several k from one pass: each row the radii of its k alone.
  both = metrics.knn_radii(real, (3, 5), chunk=7)
  assert both.shape == (2, 60) and both[1] == pytest.approx(metrics.knn_radii(real, 5))
  assert both[0] == pytest.approx(metrics.knn_radii(real, 3)) and (both[1] >= both[0]).all()
  assert 0 < got['precision'] < 1 and 0 < got['recall'] < 1


def test_precision_recall_density_coverage_of_known_cases():
  rng = np.random.default_rng(1)
  real = rng.normal(size=(200, 8))
  # A set against itself: every ball holds its centre and its k nearest neighbours.
  same = metrics.precision_recall_density_coverage(real, real.copy())
  assert same == pytest.approx(dict(precision=1, recall=1, density=6 / 5, coverage=1))
  # Far apart: nothing of one set is in the other's balls.
  apart = metrics.precision_recall_density_coverage(real, real + 100)
  assert apart == dict(precision=0, recall=0, density=0, coverage=0)
  # Collapsed onto 3 of 1,000 real points (with jitter far below the real radii):
  # faithful, no variety. Each point lies in about k others' balls, so coverage is
  # about 3 (k_dc + 1) / 1,000.
  many = rng.normal(size=(1000, 8))
  collapsed = many[[0, 1, 2]].repeat(100, 0) + rng.normal(0, 1e-4, (300, 8))
  c = metrics.precision_recall_density_coverage(many, collapsed)
  assert c['precision'] == 1 and c['recall'] <= 0.01 and c['coverage'] <= 0.05, c
  # Per class: the mean of each class's numbers.
  labels = np.arange(200) % 2
  fake = rng.normal(size=(100, 8))
  fake_labels = np.arange(100) % 2
  per_class = metrics.per_class_precision_recall(real, labels, fake, fake_labels)
  each = [metrics.precision_recall_density_coverage(real[labels == c], fake[fake_labels == c])
          for c in (0, 1)]
  for name in per_class:
    assert per_class[name] == pytest.approx((each[0][name] + each[1][name]) / 2)
