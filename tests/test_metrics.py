"""PSNR / SSIM and the optical-flow motion score on constructed inputs with known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from vldm.evaluation.fidelity import psnr, ssim
from vldm.video.motion import FlowProtocol, flow_field, flow_warp, mean_flow_magnitude

FULL_RES = FlowProtocol(short_side=None)


def _texture(n: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random uint8 texture (Gaussian-blurred white noise stretched to 0..255)."""
    noise = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    b = cv2.GaussianBlur(noise, (0, 0), sigma)
    return np.round((b - b.min()) / (b.max() - b.min()) * 255).astype(np.uint8)


def _shifted_video(n: int = 64, dx: int = 2, dy: int = 1, frames: int = 6) -> np.ndarray:
    """(T, n, n, 3) uint8: the texture translated by (dx, dy) px per frame (periodic)."""
    base = _texture(n)
    video = np.stack([np.roll(base, (t * dy, t * dx), axis=(0, 1)) for t in range(frames)])
    return np.repeat(video[..., None], 3, axis=-1)


# ---- fidelity -------------------------------------------------------------------------------


def test_psnr_identical_is_inf() -> None:
    a = np.random.default_rng(0).random((16, 16, 3))
    assert psnr(a, a) == float("inf")


def test_psnr_constant_offset_is_20db_and_torch_agrees() -> None:
    a = np.random.default_rng(0).random((16, 16, 3)) * 0.8
    b = a + 0.1  # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-6)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(psnr(a, b), abs=1e-9)
    # uint8 is cast as is; the caller passes data_range=255
    assert psnr(np.full((4, 4), 100, np.uint8), np.full((4, 4), 110, np.uint8), 255.0) == pytest.approx(
        20 * math.log10(255 / 10), abs=1e-9
    )


def test_shape_mismatch_raises_naming_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 16\)"):
        ssim(np.zeros((16, 16, 3)), np.zeros((16, 16)))


def test_ssim_identical_is_one_and_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    img = _texture(48).astype(np.float64)[..., None].repeat(3, -1) / 255.0
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(img, np.clip(img + s * rng.standard_normal(img.shape), 0, 1)) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    # gray input and torch input give the same value as the per-channel mean
    assert ssim(img[..., 0], img[..., 0] * 0.9) == pytest.approx(ssim(img, img * 0.9), abs=1e-12)
    assert ssim(torch.from_numpy(img), torch.from_numpy(img * 0.9)) == pytest.approx(ssim(img, img * 0.9))


def test_ssim_constant_images_known_value() -> None:
    # Constant images: only the luminance term survives, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert ssim(np.full((16, 16), 0.5), np.full((16, 16), 0.6)) == pytest.approx(expected, abs=1e-9)


# ---- motion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_flow_field_recovers_known_translation(method: str) -> None:
    video = _shifted_video(dx=2, dy=1, frames=2)
    flow = flow_field(video[0], video[1], method)
    assert flow.shape == (64, 64, 2)
    mean = flow[12:-12, 12:-12].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(mean, [2.0, 1.0], atol=0.3)


def test_flow_warp_undoes_translation() -> None:
    video = _shifted_video(dx=2, dy=1, frames=2)
    warped = flow_warp(video[1], flow_field(video[0], video[1]))
    err = np.abs(warped.astype(np.float64) - video[0])[12:-12, 12:-12].mean()
    assert err < 2.0  # out of 255; unwarped difference is much larger
    assert np.abs(video[1].astype(np.float64) - video[0])[12:-12, 12:-12].mean() > 5 * err


def test_mean_flow_magnitude_matches_shift_over_short_side() -> None:
    score = mean_flow_magnitude(_shifted_video(dx=2, dy=1), FULL_RES)
    assert score == pytest.approx(math.sqrt(5) / 64, rel=0.15)


def test_static_video_scores_zero() -> None:
    static = np.repeat(_shifted_video(frames=1), 5, axis=0)
    assert mean_flow_magnitude(static) < 1e-3
    assert mean_flow_magnitude(static, FULL_RES) < 1e-3


@pytest.mark.parametrize("protocol", [FlowProtocol(), FULL_RES, FlowProtocol(method="dis")])
def test_doubling_shift_doubles_score(protocol: FlowProtocol) -> None:
    one = mean_flow_magnitude(_shifted_video(dx=2, dy=1), protocol)
    two = mean_flow_magnitude(_shifted_video(dx=4, dy=2), protocol)
    assert 1.7 <= two / one <= 2.3


def test_score_comparable_across_resolutions() -> None:
    # The same motion as a fraction of the frame at 64 px and at 128 px scores alike at short_side=32.
    small = mean_flow_magnitude(_shifted_video(n=64, dx=2, dy=1))
    big = mean_flow_magnitude(_shifted_video(n=128, dx=4, dy=2))
    assert big == pytest.approx(small, rel=0.15)
    assert small == pytest.approx(math.sqrt(5) / 64, rel=0.15)


def test_frame_step_scales_score() -> None:
    video = _shifted_video(dx=1, dy=0, frames=7)
    step1 = mean_flow_magnitude(video, FlowProtocol(short_side=None, frame_step=1))
    step2 = mean_flow_magnitude(video, FlowProtocol(short_side=None, frame_step=2))
    assert 1.7 <= step2 / step1 <= 2.3


def test_input_conventions_agree() -> None:
    video = _shifted_video(dx=2, dy=1, frames=3)
    ref = mean_flow_magnitude(video)
    as_float = video.astype(np.float32) / 255.0
    as_torch = torch.from_numpy(as_float).permute(0, 3, 1, 2) * 2 - 1
    assert mean_flow_magnitude(as_float) == pytest.approx(ref, abs=1e-9)
    assert mean_flow_magnitude(as_torch) == pytest.approx(ref, abs=1e-9)


def test_invalid_inputs_raise() -> None:
    video = _shifted_video(frames=3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        mean_flow_magnitude(video[:1])
    with pytest.raises(ValueError, match="at least 4 frames"):
        mean_flow_magnitude(video, FlowProtocol(frame_step=3))
    with pytest.raises(ValueError, match="shape"):
        mean_flow_magnitude(video[..., 0])
    with pytest.raises(ValueError, match="mismatch"):
        flow_field(video[0], video[1, :32])
    with pytest.raises(ValueError, match="method"):
        FlowProtocol(method="raft")


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_moving_square_scores_above_static(method: str) -> None:
    frames = np.zeros((5, 32, 32, 3), np.uint8)
    for t in range(5):
        frames[t, 12:20, 4 + 2 * t : 12 + 2 * t] = 255
    protocol = FlowProtocol(method=method)
    moving = mean_flow_magnitude(frames, protocol)
    static = mean_flow_magnitude(np.repeat(frames[:1], 5, axis=0), protocol)
    assert moving > 1e-3
    assert moving > 10 * static
