"""The demo's learning check measures what it says on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from vldm.data.toy import generate_clip
from vldm.jobs.toy_check import score_clips


def clips(kind: str, seeds=range(4)) -> np.ndarray:
    return np.stack([generate_clip(s, kind)[0] for s in seeds])


def test_identical_clips_score_perfectly() -> None:
    real = clips("clean")
    s = score_clips(real, real)
    assert s.frame0_psnr_db == 100.0 and s.motion_ratio == pytest.approx(1.0) and s.passed


def test_static_clips_have_no_motion() -> None:
    real = clips("clean")
    s = score_clips(clips("static"), real)  # static clip i repeats real clip i's first frame
    assert s.frame0_psnr_db == 100.0 and s.motion_ratio < 0.01 and not s.passed


def test_wrong_first_frame_fails_fidelity() -> None:
    real = clips("clean")
    s = score_clips(real[::-1].copy(), real)
    assert s.frame0_psnr_db < 20 and not s.passed


def test_known_noise_gives_known_psnr() -> None:
    real = clips("clean")
    noisy = real.copy()
    noisy[:, 0] = np.clip(noisy[:, 0].astype(int) + np.where(np.indices(noisy[:, 0].shape).sum(0) % 2, 10, -10),
                          0, 255).astype(np.uint8)
    s = score_clips(noisy, real)
    assert 26.0 <= s.frame0_psnr_db <= 28.2  # 20 log10(255 / 10) = 28.1 dB before clipping at 0 / 255


def test_mismatched_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="pair up"):
        score_clips(clips("clean", range(2)), clips("clean", range(3)))


def test_a_text_to_video_run_is_refused_naming_the_i2v_stage(smoke_chain, toy_root) -> None:
    from vldm.jobs.toy_check import run_toy_check

    with pytest.raises(ValueError, match="is a text-to-video model: .* give the i2v stage"):
        run_toy_check(smoke_chain / "hq", toy_root, num_clips=2)
    assert run_toy_check(smoke_chain / "i2v", toy_root, num_clips=2).num_clips == 2
