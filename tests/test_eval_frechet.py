"""Fréchet distance and mergeable feature statistics (vldm.evaluation.frechet)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from vldm.evaluation.frechet import FeatureStats, frechet_distance, frechet_from_stats, psd_sqrt


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The reference formula (pytorch-fid / StyleGAN), float64 scipy sqrtm, real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("dim", [2, 16, 64, 200])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_on_random_gaussians(dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((3 * dim + 10, dim)) * rng.uniform(0.5, 2.0, dim)
    b = rng.standard_normal((3 * dim + 10, dim)) @ rng.standard_normal((dim, dim)) * 0.4 + rng.standard_normal(dim)
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    ours = frechet_from_stats(sa, sb)
    ref = scipy_frechet(sa.mean, sa.cov, sb.mean, sb.cov)
    assert ref > 0.1
    assert abs(ours - ref) <= 1e-6 * ref
    assert abs(frechet_from_stats(sb, sa) - ours) <= 1e-9 * ours  # symmetric


@pytest.mark.parametrize("dim,n", [(64, 10), (200, 30)])
def test_rank_deficient_fewer_samples_than_dims(dim: int, n: int) -> None:
    """n < d: both covariances are singular (rank n - 1). Exact reference: with S1 = A A^T and
    S2 = B B^T, tr sqrt(S1^1/2 S2 S1^1/2) is the nuclear norm of A^T B (a small, well-conditioned SVD)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((n, dim))
    b = rng.standard_normal((n, dim)) * 1.3 + 0.2
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    ac = (a - a.mean(0)) / np.sqrt(n - 1)
    bc = (b - b.mean(0)) / np.sqrt(n - 1)
    nuclear = np.linalg.svd(ac @ bc.T, compute_uv=False).sum()
    exact = float(np.sum((sa.mean - sb.mean) ** 2) + np.sum(ac**2) + np.sum(bc**2) - 2.0 * nuclear)
    ours = frechet_from_stats(sa, sb)
    assert abs(ours - exact) <= 1e-6 * exact
    assert np.linalg.matrix_rank(sa.cov) == n - 1
    assert frechet_from_stats(sa, sa) <= 1e-8


@pytest.mark.parametrize("seed", [0, 1])
def test_commuting_near_singular_covariances_exact(seed: int) -> None:
    """S1 = Q diag(p) Q^T, S2 = Q diag(q) Q^T: d^2 = |dmu|^2 + sum (sqrt p - sqrt q)^2, exactly,
    with eigenvalues spanning 1 .. 1e-12 and exact zeros (rank-deficient and near-singular)."""
    rng = np.random.default_rng(seed)
    d = 48
    q = random_orthogonal(d, rng)
    p1 = 10.0 ** rng.uniform(-12, 0, d)
    p2 = 10.0 ** rng.uniform(-12, 0, d)
    p1[:10] = 0.0          # rank-deficient
    p2[5:15] = 0.0
    s1 = (q * p1) @ q.T
    s2 = (q * p2) @ q.T
    mu1, mu2 = rng.standard_normal(d) * 0.01, rng.standard_normal(d) * 0.01
    exact = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(p1) - np.sqrt(p2)) ** 2))
    assert abs(frechet_distance(mu1, s1, mu2, s2) - exact) <= 1e-6 * exact
    assert frechet_distance(mu1, s1, mu1, s1) <= 1e-8


def test_diagonal_closed_form_and_mean_only() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([4.0, 1.0, 0.0]), np.diag([1.0, 9.0, 0.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5.0 + 1.0 + 4.0, rel=1e-12)
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(5.0, rel=1e-12)


def test_identical_stats_give_zero() -> None:
    rng = np.random.default_rng(3)
    s = FeatureStats.from_features(rng.standard_normal((500, 100)) @ rng.standard_normal((100, 100)) + 5.0)
    assert 0.0 <= frechet_from_stats(s, s) <= 1e-8
    # psd_sqrt is an exact square root (to round-off) on a full-rank covariance
    r = psd_sqrt(s.cov)
    assert np.allclose(r @ r, s.cov, rtol=0, atol=1e-9 * np.abs(s.cov).max())


def test_merge_of_halves_equals_whole_and_np_cov() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((301, 12)) * 3.0 + 1.5
    whole = FeatureStats.from_features(x)
    halves = FeatureStats.from_features(x[:150]).merge(FeatureStats.from_features(x[150:]))
    streamed = FeatureStats.empty(12)
    for i in range(0, 301, 64):
        streamed.update(x[i:i + 64])
    for s in (halves, streamed):
        assert s.n == 301
        np.testing.assert_allclose(s.mean, whole.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.cov, whole.cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert frechet_from_stats(halves, whole) <= 1e-8


def test_npz_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(5)
    s = FeatureStats.from_features(rng.standard_normal((20, 6)))
    path = tmp_path / "cache" / "ref.npz"
    s.to_npz(path, {"protocol": "abc123", "num_videos": 20})
    loaded, meta = FeatureStats.from_npz(path)
    assert meta == {"protocol": "abc123", "num_videos": 20}
    assert loaded.n == 20
    np.testing.assert_array_equal(loaded.sum, s.sum)
    np.testing.assert_array_equal(loaded.sum_outer, s.sum_outer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]  # no temp file left


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="feature dimensions differ: 3 vs 4"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma1 must be"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="different feature networks"):
        frechet_from_stats(FeatureStats.empty(3), FeatureStats.empty(5))
    with pytest.raises(ValueError, match="cannot merge"):
        FeatureStats.empty(3).merge(FeatureStats.empty(5))
    with pytest.raises(ValueError, match=r"features must be \(m, 3\)"):
        FeatureStats.empty(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        _ = FeatureStats.from_features(np.zeros((1, 3))).cov
