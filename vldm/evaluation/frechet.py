"""Fréchet distance between Gaussians fitted to features (FID: Heusel et al., 2017; FVD:
Unterthiner et al., 2018), with mergeable float64 feature statistics.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})``.

The reference implementations (pytorch-fid, StyleGAN2-ADA, StyleGAN-V) take
``scipy.linalg.sqrtm(S1 @ S2)``, a non-symmetric square root that loses accuracy (and can turn
complex) when a covariance is near-singular, e.g. fewer samples than feature dimensions. Here
the trace term is ``sum of singular values of S1^{1/2} S2^{1/2}`` (the nuclear norm; equal to
the trace above since ``S1^{1/2} S2 S1^{1/2} = (S1^{1/2} S2^{1/2})(S1^{1/2} S2^{1/2})^T``), with
each symmetric square root from ``eigh`` and eigenvalues at round-off level (below
``d * eps * max eigenvalue``) set to exactly zero. Everything is float64; no scipy.

Covariances are unbiased (``n - 1``), as pytorch-fid / clean-fid (``np.cov``); StyleGAN-V divides
by ``n`` (the difference is ``O(1/n)`` of the covariance terms).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_EPS = float(np.finfo(np.float64).eps)


@dataclass
class FeatureStats:
    """Running sums of features, mergeable across batches and ranks (all float64).

    ``n``: number of feature vectors; ``sum``: ``(d,)``; ``sum_outer``: ``(d, d)``, the sum of
    ``x x^T``. Reducing across ranks is summing the three fields (an all-reduce).
    """

    n: int
    sum: np.ndarray
    sum_outer: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "FeatureStats":
        return cls(0, np.zeros(dim, dtype=np.float64), np.zeros((dim, dim), dtype=np.float64))

    @classmethod
    def from_features(cls, features: np.ndarray) -> "FeatureStats":
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be (m, d), got shape {features.shape}")
        stats = cls.empty(features.shape[1])
        stats.update(features)
        return stats

    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def update(self, features: np.ndarray) -> "FeatureStats":
        """Add ``(m, d)`` features (any float dtype; accumulated in float64). Returns ``self``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (m, {self.dim}), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        self.n += int(x.shape[0])
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """A new :class:`FeatureStats` holding both sets of features."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature stats of dimension {self.dim} and {other.dim}")
        return FeatureStats(self.n + other.n, self.sum + other.sum, self.sum_outer + other.sum_outer)

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("no features accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance ``(sum_outer - n mu mu^T) / (n - 1)``, symmetrised."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.mean
        c = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2.0

    def to_npz(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Save sums and ``meta`` (stored as a JSON string) to ``path`` (written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, n=np.int64(self.n), sum=self.sum, sum_outer=self.sum_outer,
                 meta=np.array(json.dumps(meta or {}, sort_keys=True, default=str)))
        os.replace(tmp, path)

    @classmethod
    def from_npz(cls, path: str | Path) -> tuple["FeatureStats", dict[str, Any]]:
        """Load what :meth:`to_npz` wrote: ``(stats, meta)``. No pickles are read."""
        with np.load(Path(path), allow_pickle=False) as z:
            stats = cls(int(z["n"]), z["sum"].astype(np.float64), z["sum_outer"].astype(np.float64))
            meta = json.loads(str(z["meta"]))
        return stats, meta


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be a vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{which} must be ({mu.shape[0]}, {mu.shape[0]}) to match mu{which}, "
                         f"got shape {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{which} / sigma{which} contain NaN or inf")
    return mu, sigma


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via ``eigh``; eigenvalues below ``d * eps * max(|w|)`` become 0."""
    sym = (sigma + sigma.T) / 2.0
    w, v = np.linalg.eigh(sym)
    tol = sym.shape[0] * _EPS * max(float(np.max(np.abs(w))), 0.0) if w.size else 0.0
    w = np.where(w > tol, w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    float64 throughout; stable for singular / near-singular covariances (see the module doc).
    Raises ValueError on mismatched dimensions or non-finite inputs. Never negative.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]} "
                         "(statistics from different feature networks?)")
    diff = mu1 - mu2
    cross = np.linalg.svd(psd_sqrt(sigma1) @ psd_sqrt(sigma2), compute_uv=False).sum()
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return max(value, 0.0)


def frechet_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """:func:`frechet_distance` between the Gaussians fitted to two :class:`FeatureStats`."""
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim} (statistics from different feature networks?)")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
