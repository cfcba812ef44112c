"""Precision / recall (Kynkäänniemi et al. 2019, k = 3) and density / coverage (Naeem et al. 2020, k = 5)
of generated features against real ones, in chunks so no N x N distance matrix is held.

Same definitions and the same k-th-neighbour convention as the `prdc` package (NAVER, 0.2): a sample's
radius is the distance to its k-th nearest other sample of its own set (the sample itself is its
0-th neighbour); "inside a ball" is a strict `<`. `tests/test_prdc.py` checks the numbers against a
fixture made by `prdc.compute_prdc` (tools/make_prdc_fixture.py).
"""

from __future__ import annotations

import numpy as np

from ratlip_cli.errors import RatlipError

PR_K = 3  # Kynkäänniemi et al. 2019 ("Improved precision and recall metric"), k = 3
DC_K = 5  # Naeem et al. 2020 ("Reliable fidelity and diversity metrics"), k = 5
CHUNK = 1024


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise RatlipError(f"{what} features must be a non-empty (N, D) array, got shape {arr.shape}")
    return arr


def _distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows of `a` and of `b` (float64; `b_sq`: squared norms of `b`)."""
    sq = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


def knn_radii(feats: np.ndarray, k: int, chunk: int = CHUNK) -> np.ndarray:
    """Distance of every row to its k-th nearest other row of the same set (the row itself is neighbour 0)."""
    feats = _as_features(feats, "radius")
    if not 1 <= k < feats.shape[0]:
        raise RatlipError(f"k-NN radii need 1 <= k < number of samples, got k={k} for {feats.shape[0]} samples")
    sq = (feats * feats).sum(1)
    out = np.empty(feats.shape[0])
    for start in range(0, feats.shape[0], chunk):
        d = _distances(feats[start : start + chunk], feats, sq)
        out[start : start + chunk] = np.partition(d, k, axis=1)[:, k]
    return out


def prdc(
    real: np.ndarray, fake: np.ndarray, pr_k: int = PR_K, dc_k: int = DC_K, chunk: int = CHUNK
) -> dict[str, float]:
    """Precision and recall with `pr_k`, density and coverage with `dc_k`, of `fake` against `real` features."""
    real = _as_features(real, "real")
    fake = _as_features(fake, "generated")
    if real.shape[1] != fake.shape[1]:
        raise RatlipError(f"precision/recall feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    real_pr, real_dc = knn_radii(real, pr_k, chunk), knn_radii(real, dc_k, chunk)
    fake_pr = knn_radii(fake, pr_k, chunk)
    real_sq = (real * real).sum(1)
    in_real_ball = 0  # fakes inside some real pr_k-ball (precision)
    density_hits = 0  # (fake, real) pairs with the fake inside the real's dc_k-ball (density)
    real_in_fake_ball = np.zeros(real.shape[0], dtype=bool)  # recall
    nearest_fake = np.full(real.shape[0], np.inf)  # coverage
    for start in range(0, fake.shape[0], chunk):
        d = _distances(fake[start : start + chunk], real, real_sq)  # (chunk fakes, reals)
        in_real_ball += int((d < real_pr[None, :]).any(axis=1).sum())
        density_hits += int((d < real_dc[None, :]).sum())
        real_in_fake_ball |= (d < fake_pr[start : start + chunk, None]).any(axis=0)
        nearest_fake = np.minimum(nearest_fake, d.min(axis=0))
    n_fake = fake.shape[0]
    return {
        "precision": in_real_ball / n_fake,
        "recall": float(real_in_fake_ball.mean()),
        "density": density_hits / (dc_k * n_fake),
        "coverage": float((nearest_fake < real_dc).mean()),
    }
