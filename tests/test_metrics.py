"""FID, IS and KID against closed forms and plain NumPy/SciPy references."""
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
