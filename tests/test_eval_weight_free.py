"""Weight-free metrics on constructed videos: FRPD features, motion, flicker, warping error, fidelity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.stats

from vldm.evaluation.frechet import FeatureStats, frechet_from_stats
from vldm.video.motion import FlowProtocol, flow_field, mean_flow_magnitude
from vldm.evaluation.random_features import RandomProjectionFeatures, pcg64_gaussian
from vldm.evaluation.temporal import (conditioning_fidelity, curation_sample_indices, flicker, motion_distance,
                                      motion_scores, warping_error, wasserstein_1d)


def texture(size: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture, uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.uniform(0, 1, (size, size, 3)).astype(np.float32), (0, 0), sigma)
    x = (x - x.min()) / (x.max() - x.min())
    return np.rint(30 + 195 * x).astype(np.uint8)


def shifted_video(t: int, size: int, dx: int, dy: int, seed: int) -> np.ndarray:
    """uint8 (t, size, size, 3): a textured image whose content moves by (dx, dy) px per frame."""
    margin = t * max(abs(dx), abs(dy)) + 2
    big = texture(size + 2 * margin, seed)
    return np.stack([big[margin - k * dy:margin - k * dy + size, margin - k * dx:margin - k * dx + size]
                     for k in range(t)])


def videos_set(n: int, t: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([shifted_video(t, size, int(rng.integers(-2, 3)), int(rng.integers(-2, 3)), seed * 1000 + i)
                     for i in range(n)])


def frpd(net: RandomProjectionFeatures, a: np.ndarray, b: np.ndarray) -> float:
    return frechet_from_stats(FeatureStats.from_features(net.features(a)), FeatureStats.from_features(net.features(b)))


# ---------------------------------------------------------------- FRPD (random-projection features)

def test_pcg64_gaussian_is_a_fixed_standard_normal_stream() -> None:
    z = pcg64_gaussian(0, 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(scipy.stats.kurtosis(z)) < 0.05
    # the raw PCG64 stream is specified bit for bit: these values hold on every machine
    np.testing.assert_allclose(pcg64_gaussian(0, 3), [1.3766350132497243, 0.7887205905387179, 0.3624497920131611],
                               rtol=1e-12)


def test_random_projection_features_deterministic_and_named() -> None:
    vids = videos_set(3, t=12, size=48)
    a = RandomProjectionFeatures()
    f = a.features(vids)
    assert a.name == "rp256-s0" and f.shape == (3, 256) and f.dtype == np.float64
    np.testing.assert_array_equal(RandomProjectionFeatures().features(vids), f)
    np.testing.assert_array_equal(a.features(vids[[1]]), f[[1]])
    assert not np.allclose(RandomProjectionFeatures(seed=1).features(vids), f)
    assert RandomProjectionFeatures(dim=64, seed=3).name == "rp64-s3"
    with pytest.raises(ValueError, match="uint8"):
        a.features(vids.astype(np.float32))
    with pytest.raises(ValueError, match="even"):
        RandomProjectionFeatures(dim=7)


def test_frpd_zero_for_identical_and_monotone_in_degradation() -> None:
    net = RandomProjectionFeatures(dim=64)
    ref = videos_set(24, seed=0)
    assert frpd(net, ref, ref.copy()) <= 1e-8
    z = np.random.default_rng(9).standard_normal(ref.shape)
    noised = [frpd(net, ref, np.clip(np.rint(ref + s * z), 0, 255).astype(np.uint8)) for s in (4, 8, 16, 32, 64)]
    assert all(b > a for a, b in zip(noised, noised[1:])), noised
    blurred = [frpd(net, ref, np.stack([[cv2.GaussianBlur(f, (0, 0), s) for f in v] for v in ref]))
               for s in (0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(blurred, blurred[1:])), blurred
    brighter = [frpd(net, ref, np.clip(ref.astype(int) + c, 0, 255).astype(np.uint8)) for c in (5, 10, 20)]
    assert all(b > a for a, b in zip(brighter, brighter[1:])), brighter
    # motion matters: the same first frames, frozen
    frozen = np.repeat(ref[:, :1], ref.shape[1], axis=1)
    assert frpd(net, ref, frozen) > noised[0]


# ---------------------------------------------------------------- motion

@pytest.mark.parametrize("method", ["farneback", "dis"])
@pytest.mark.parametrize("dx,dy", [(2, 1), (-1, 3)])
def test_known_shift_gives_known_flow(method: str, dx: int, dy: int) -> None:
    v = shifted_video(4, 64, dx, dy, seed=1)
    flow = flow_field(v[0], v[1], method)[12:-12, 12:-12]
    np.testing.assert_allclose(np.median(flow.reshape(-1, 2), axis=0), [dx, dy], atol=0.15)
    proto = FlowProtocol(method=method, short_side=None)
    assert mean_flow_magnitude(v, proto) == pytest.approx(np.hypot(dx, dy) / 64, rel=0.15)


def test_motion_scores_match_data_curation() -> None:
    """Same numbers as curation's MotionScorer (2 fps sampling, DIS, short side 32)."""
    from data_curation.records import Clip, ClipSpan
    from data_curation.scorers.motion import MotionScorer, sample_indices

    for t, fps in [(16, 8.0), (25, 24.0), (5, 30.0), (2, 8.0), (9, 2.0), (12, 0.0)]:
        assert curation_sample_indices(t, fps) == sample_indices(t, fps, 2.0)
    vids = np.stack([shifted_video(16, 48, 1, 0, 3), shifted_video(16, 48, 0, 2, 4), shifted_video(16, 48, 0, 0, 5)])
    ours = motion_scores(vids, fps=8.0)
    scorer = MotionScorer()
    theirs = [scorer.score(Clip("v", i, "s", ClipSpan(0, 16), 8.0, v))["motion_score"] for i, v in enumerate(vids)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    # at 8 fps, 2 fps sampling is every 4th frame: 4 px per sampled step, on frames resized 48 -> 32
    assert ours[0] == pytest.approx(4 * (32 / 48) / 32, rel=0.15)
    assert ours[2] < 1e-3
    np.testing.assert_allclose(motion_scores(vids, fps=[8.0, 8.0, 8.0]), ours)


def test_motion_distance() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 0.01, 40), rng.gamma(3.0, 0.01, 25)
    same = motion_distance(a, a.copy())
    assert same["wasserstein"] == 0.0 and same["ratio"] == 1.0
    d = motion_distance(a, b)
    assert d["wasserstein"] == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)
    assert d["ratio"] == pytest.approx(a.mean() / b.mean())
    assert wasserstein_1d(a, a + 0.003) == pytest.approx(0.003, rel=1e-9)
    assert np.isnan(motion_distance(a, np.zeros(4))["ratio"])


# ---------------------------------------------------------------- warping error and flicker

def test_warping_error_near_zero_for_pure_motion_and_high_when_shuffled() -> None:
    moving = shifted_video(8, 48, 2, 1, seed=2)[None]
    shuffled = moving[:, np.random.default_rng(0).permutation(8)]
    independent = np.stack([texture(48, 100 + k) for k in range(6)])[None]  # no coherent motion
    for method in ("dis", "farneback"):
        err_moving = warping_error(moving, method)
        assert err_moving.shape == (1,)
        assert err_moving[0] < 2e-3
        assert warping_error(shuffled, method)[0] > 10 * err_moving[0]
        assert warping_error(independent, method)[0] > 10 * err_moving[0]
    static = np.repeat(moving[:, :1], 4, axis=1)
    assert warping_error(static)[0] < 1e-5


def test_flicker_strictly_increases_with_added_flicker() -> None:
    base = shifted_video(16, 48, 1, 1, seed=3)[None]
    signs = np.where(np.random.default_rng(1).random(16) < 0.5, -1.0, 1.0)[:, None, None, None]
    values = []
    for amp in (0, 1, 2, 4, 8, 16):
        v = np.clip(np.rint(base.astype(np.float64) + amp * signs), 0, 255).astype(np.uint8)
        values.append(float(flicker(v)[0]))
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] < 0.5  # steady motion alone barely registers
    alternating = np.clip(np.rint(np.repeat(base[:, :1], 10, 1).astype(float)
                                  + 6 * np.array([1, -1] * 5)[None, :, None, None, None]), 0, 255).astype(np.uint8)
    assert flicker(alternating)[0] == pytest.approx(6.0, abs=0.05)
    fade = np.clip(np.rint(np.repeat(base[:, :1], 10, 1).astype(float)
                           + 3.0 * np.arange(10)[None, :, None, None, None]), 0, 255).astype(np.uint8)
    assert flicker(fade)[0] < 0.1  # a linear fade is not flicker
    with pytest.raises(ValueError, match="at least 3 frames"):
        flicker(base[:, :2])


# ---------------------------------------------------------------- conditioning fidelity

def test_conditioning_fidelity() -> None:
    vids = np.stack([shifted_video(4, 32, 1, 0, s) for s in range(3)])
    cond = vids[:, 0].copy()
    exact = conditioning_fidelity(vids, cond)
    np.testing.assert_array_equal(exact["psnr"], [100.0] * 3)
    np.testing.assert_allclose(exact["ssim"], 1.0, atol=1e-12)
    noisy = np.clip(cond.astype(int) + np.random.default_rng(0).integers(-8, 9, cond.shape), 0, 255).astype(np.uint8)
    res = conditioning_fidelity(vids, noisy)
    mse = ((vids[:, 0].astype(float) - noisy) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(res["psnr"], 10 * np.log10(255.0**2 / mse), rtol=1e-12)
    assert np.all(res["ssim"] < 1.0)
    with pytest.raises(ValueError, match="resolution mismatch: videos are 32x32, conditioning images 16x16"):
        conditioning_fidelity(vids, cond[:, :16, :16])
    with pytest.raises(ValueError, match="3 videos but 2 conditioning images"):
        conditioning_fidelity(vids, cond[:2])
