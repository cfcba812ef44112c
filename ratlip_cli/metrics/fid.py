"""Frechet distance (FID) and kernel distance (KID) between two sets of features.

Computed here rather than with clean-fid's `frechet_distance`, which calls
`scipy.linalg.sqrtm(..., disp=False)` (removed in scipy 1.18). All arithmetic is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratlip_cli.errors import RatlipError


@dataclass
class GaussianStats:
    """Mean and covariance of a feature set (what FID compares)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_stats(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (rows are samples) of `features`, in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise RatlipError(f"FID needs at least 2 feature vectors, got an array of shape {feats.shape}")
    return GaussianStats(feats.mean(axis=0), np.cov(feats, rowvar=False), feats.shape[0])


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0).

    The expensive part of FID (an eigendecomposition); for a fixed reference covariance compute it
    once and pass it to `frechet_distance` as `sqrt_sigma2`.
    """
    sym = (np.asarray(matrix, dtype=np.float64) + np.asarray(matrix, dtype=np.float64).T) / 2.0
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, sqrt_sigma2: np.ndarray | None = None) -> float:
    """Tr(sqrt(sigma1 @ sigma2)) for covariance matrices.

    sigma1 @ sigma2 is similar to the symmetric PSD matrix sqrt(sigma2) @ sigma1 @ sqrt(sigma2), so
    both have the same real, non-negative eigenvalues, and the trace of the square root is the sum
    of their square roots. This avoids `sqrtm` of a non-symmetric product and its spurious imaginary
    parts; negative round-off eigenvalues are clipped to 0.
    """
    root = psd_sqrt(sigma2) if sqrt_sigma2 is None else np.asarray(sqrt_sigma2, dtype=np.float64)
    middle = root @ np.asarray(sigma1, dtype=np.float64) @ root
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma2: np.ndarray | None = None) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrt(sigma1 sigma2)); clipped at 0
    (it is non-negative; a tiny negative value can only come from round-off). `sqrt_sigma2`, the
    precomputed `psd_sqrt(sigma2)` of a reference, saves an eigendecomposition.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise RatlipError(
            f"FID statistics do not match: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape} (different feature extractors?)"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise RatlipError("FID statistics contain NaN or inf (did the generator produce non-finite images?)")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, sqrt_sigma2)
    return max(float(value), 0.0)


def fid_from_stats(a: GaussianStats, b: GaussianStats, sqrt_sigma_b: np.ndarray | None = None) -> float:
    """FID between two precomputed feature statistics (`sqrt_sigma_b`: optional `psd_sqrt(b.sigma)`)."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, sqrt_sigma_b)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets (rows are samples)."""
    return fid_from_stats(feature_stats(feats1), feature_stats(feats2))


def kernel_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

    Returns (mean, std over subsets), raw (not scaled by 1e3). Each subset draws
    m = min(subset_size, len(feats1), len(feats2)) rows from each set without replacement, with a
    `numpy` generator seeded by `seed`. Unbiased, so it can be slightly negative for equal
    distributions.
    """
    x_all = np.asarray(feats1, dtype=np.float64)
    y_all = np.asarray(feats2, dtype=np.float64)
    if x_all.shape[1:] != y_all.shape[1:]:
        raise RatlipError(f"KID feature sizes differ: {x_all.shape[1:]} vs {y_all.shape[1:]}")
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise RatlipError(f"KID needs at least 2 images in each set, got {x_all.shape[0]} and {y_all.shape[0]}")
    if num_subsets < 1:
        raise RatlipError(f"config key 'eval.kid_subsets' must be positive, got {num_subsets}")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())
