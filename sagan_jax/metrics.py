"""Frechet distance, Inception Score and KID from features and logits, on the
host in float64."""
import numpy as np

# The neighbours of precision and recall (k_pr) and of density and coverage (k_dc), as
# Naeem et al. 2020; a set of features needs k_dc + 1 rows for its k_dc-th nearest other.
K_PR, K_DC = 3, 5
MIN_SAMPLES = K_DC + 1
MIN_SAMPLES_WHY = f"density and coverage use each sample's {K_DC}th nearest other"


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [d] and unbiased covariance [d, d] of features [n, d], in float64."""
  x = np.asarray(features, np.float64)
  return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off clipped)."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  tr((S1 S2)^(1/2)) is computed as tr((A S2 A)^(1/2)) with A = S1^(1/2): the
  same eigenvalues, but of a symmetric PSD matrix, so eigh gives them without
  the complex round-off and singular-matrix failures of a general sqrtm.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  a = _psd_sqrt(sigma1)
  m = a @ sigma2 @ a
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance_to(features: np.ndarray, mu, sigma) -> float:
  """The Frechet distance of features [n, d] (their moments) to (mu, sigma). With no
  more samples than dimensions (a quick FID of 1,000 samples, or a test's few, against
  Inception's 2048) it needs no d x d eigendecomposition: with A = (x - mean) /
  sqrt(n - 1), S1 = A^T A, and the nonzero eigenvalues of S1 S2 are those of the n x n
  symmetric PSD matrix A S2 A^T."""
  x = np.asarray(features, np.float64)
  if len(x) > x.shape[1]:
    return frechet_distance(*moments(x), mu, sigma)
  a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
  sigma = np.asarray(sigma, np.float64)
  m = a @ sigma @ a.T
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
  diff = x.mean(0) - np.asarray(mu, np.float64)
  return float(diff @ diff + (a * a).sum() + np.trace(sigma) - 2 * trace_sqrt)


def frechet_distance_of_features(x: np.ndarray, y: np.ndarray) -> float:
  """The Frechet distance of features x [n1, d] and y [n2, d]; cheap when n < d,
  as in intra-class FID (ImageNet: about 1,300 real images per class, d = 2048).

  With A = (x - mean) / sqrt(n1 - 1), S1 = A^T A (and S2 = B^T B): the nonzero
  eigenvalues of S1 S2 are the squared singular values of A B^T [n1, n2], so
  tr((S1 S2)^(1/2)) is the sum of those singular values; no d x d matrix.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if min(len(x), len(y)) >= x.shape[1]:
    return frechet_distance(*moments(x), *moments(y))
  a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
  b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
  trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
  diff = x.mean(0) - y.mean(0)
  return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * trace_sqrt)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) on each of `splits` equal parts (one per sample when
  there are fewer samples); (mean, std)."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  scores = []
  for part in np.array_split(logp, min(splits, len(logp))):
    p_y = np.exp(part).mean(0)
    kl = (np.exp(part) * (part - np.log(p_y))).sum(1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(features1, features2, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 (Binkowski et al. 2018),
  averaged over random subsets; (mean, std)."""
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  d, m = x.shape[1], min(subset_size, len(x), len(y))
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    k_aa, k_bb, k_ab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
    off_diagonal = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    values.append(off_diagonal(k_aa) + off_diagonal(k_bb) - 2 * k_ab.mean())
  return float(np.mean(values)), float(np.std(values))


def within_class_diversity(x: np.ndarray, labels: np.ndarray, max_per_class: int = 2000) -> float:
  """The mean, over the classes present, of the mean Euclidean distance between
  two different rows of `x` [n, d] of that class (the first `max_per_class`
  of each; classes with one row are left out). A generator that ignores z
  within a class scores 0 however good each image; real data sets the scale."""
  means = []
  for c in np.unique(labels):
    v = np.asarray(x[labels == c][:max_per_class], np.float64)
    if len(v) < 2:
      continue
    sq = (v * v).sum(1)
    d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * v @ v.T, 0, None))
    means.append(d.sum() / (len(v) * (len(v) - 1)))  # the diagonal is 0
  return float(np.mean(means)) if means else float('nan')  # nan: no class has two rows


# Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et
# al. 2020): each sample's k-th nearest-neighbour distance within its own set is the
# radius of a ball around it; the sets' manifolds are the unions of those balls.

def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """||a_i - b_j||^2 [len(a), len(b)], in float64."""
  sq = lambda x: (x * x).sum(1)
  return np.clip(sq(a)[:, None] + sq(b)[None, :] - 2 * a @ b.T, 0, None)


def _rows(n: int, chunk: int):
  return (slice(s, min(s + chunk, n)) for s in range(0, n, chunk))


def knn_radii(x: np.ndarray, k, chunk: int = 2048) -> np.ndarray:
  """Squared distance from each row of x to its k-th nearest other row [len(x)]; for a
  tuple of k, [len(k), len(x)] from one pass over the distances."""
  ks = np.atleast_1d(k)
  out = np.empty((len(ks), len(x)))
  for rows in _rows(len(x), chunk):
    d = _squared_distances(x[rows], x)
    d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # not itself
    out[:, rows] = np.partition(d, ks - 1, axis=1)[:, ks - 1].T
  return out if np.ndim(k) else out[0]


def _ball_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                 chunk: int = 2048) -> np.ndarray:
  """For each of `points`, how many balls (centres, squared radii) hold it; and for
  each centre, whether its ball holds any point: ([len(points)], [len(centres)])."""
  counts, covered = np.zeros(len(points), np.int64), np.zeros(len(centres), bool)
  for rows in _rows(len(points), chunk):
    inside = _squared_distances(points[rows], centres) <= radii[None, :]
    counts[rows] = inside.sum(1)
    covered |= inside.any(0)
  return counts, covered


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k_pr: int = K_PR,
                                      k_dc: int = K_DC, real_radii=None) -> dict[str, float]:
  """Of features real [n, d] and fake [m, d]:
  - precision: the fraction of fakes inside some real's k_pr-NN ball (fidelity);
  - recall: the fraction of reals inside some fake's k_pr-NN ball (variety);
  - density: the mean number of real k_dc-NN balls holding a fake, over k_dc (1 in
    expectation for identical distributions; (k+1)/k for a set against itself);
  - coverage: the fraction of reals whose k_dc-NN ball holds a fake.
  A generator that collapses onto a few real images keeps a high precision while its
  recall and coverage fall towards 0.
  real_radii: knn_radii(real, (k_pr, k_dc)), where the caller keeps them (a reference
  scored against at every evaluation: the largest part of the cost)."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  real_pr, real_dc = knn_radii(real, (k_pr, k_dc)) if real_radii is None else real_radii
  fake_pr = knn_radii(fake, k_pr)
  precise = _ball_counts(fake, real, real_pr)[0] > 0
  recalled = _ball_counts(real, fake, fake_pr)[0] > 0
  counts, covered = _ball_counts(fake, real, real_dc)
  return {'precision': float(precise.mean()), 'recall': float(recalled.mean()),
          'density': float(counts.mean() / k_dc), 'coverage': float(covered.mean())}


def per_class_precision_recall(real, real_labels, fake, fake_labels, radii=None,
                               k_pr: int = K_PR, k_dc: int = K_DC) -> dict:
  """precision_recall_density_coverage within each class present in both sets (with
  more than k_dc examples in each), averaged over those classes. radii: a dict in
  which each class's real k-NN radii are kept for the next call (with the same real)."""
  radii = {} if radii is None else radii
  per_class = []
  for c in np.intersect1d(real_labels, fake_labels):
    if min((real_labels == c).sum(), (fake_labels == c).sum()) <= max(k_pr, k_dc):
      continue
    real_c = real[real_labels == c]
    if c not in radii:
      radii[c] = knn_radii(np.asarray(real_c, np.float64), (k_pr, k_dc))
    per_class.append(precision_recall_density_coverage(real_c, fake[fake_labels == c], k_pr,
                                                       k_dc, real_radii=radii[c]))
  if not per_class:
    return {}
  return {name: float(np.mean([m[name] for m in per_class])) for name in per_class[0]}
