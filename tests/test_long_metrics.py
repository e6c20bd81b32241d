"""Long-clip metrics on clips made here: a known drift, a known seam, a known change of direction."""

from __future__ import annotations

import numpy as np
import pytest

from vldm.evaluation.long_metrics import colour_drift, long_scores, motion_continuation, seam_jump, window_boundaries


def moving_square(t: int, dx: float = 1.0, dy: float = 0.0, background=(40, 30, 60), size: int = 32,
                  drift_per_frame: float = 0.0, start: int = 4) -> np.ndarray:
    """A bright square moving by ``(dx, dy)`` a frame over a flat background that brightens by ``drift_per_frame``."""
    frames = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):
        frame = np.clip(np.array(background, np.float64) + drift_per_frame * i, 0, 255)
        frames[i] = frame.astype(np.uint8)
        x, y = int(round(start + dx * i)) % (size - 8), int(round(start + dy * i)) % (size - 8)
        frames[i, y:y + 8, x:x + 8] = (220, 200, 40)
    return frames


def test_colour_drift_is_the_background_delta_e_and_ignores_the_shape() -> None:
    steady = moving_square(24)
    assert colour_drift(steady) == pytest.approx(0.0, abs=1e-4)
    drifting = moving_square(24, drift_per_frame=2.0)
    lab_step = colour_drift(drifting)
    assert lab_step > 10  # 42 grey levels brighter after 21 frames
    assert colour_drift(moving_square(24, drift_per_frame=1.0)) == pytest.approx(lab_step / 2, rel=0.15)
    with pytest.raises(ValueError, match="need at least 6, got 4"):
        colour_drift(steady[:4])


def test_seam_jump_is_one_for_a_smooth_clip_and_large_for_a_cut() -> None:
    smooth = moving_square(24)
    assert seam_jump([smooth], [6, 12, 18]) == pytest.approx(1.0, abs=0.05)
    cut = smooth.copy()
    cut[12:] = moving_square(12, background=(90, 90, 90))
    assert seam_jump([cut], [12]) > 5
    with pytest.raises(ValueError, match="at least one window boundary"):
        seam_jump([smooth], [])
    with pytest.raises(ValueError, match="do not fit a clip of 24 frames"):
        seam_jump([smooth], [30])


def test_motion_continuation_counts_windows_moving_the_first_ones_way() -> None:
    right = moving_square(24, dx=1.0)
    assert motion_continuation([right], [6, 12, 18]) == 1.0
    turned = np.concatenate([moving_square(12, dx=1.0), moving_square(12, dx=0.0, dy=1.0, start=15)])
    assert motion_continuation([turned], [6, 12, 18]) == pytest.approx(1 / 3)  # windows 3 and 4 go down
    scores = long_scores([right, turned], window_boundaries([(0, 6), (4, 10), (8, 14), (12, 18), (16, 22), (18, 24)]))
    assert scores.num_clips == 2 and scores.continuation < 1.0


def test_window_boundaries_are_where_each_window_starts_adding_frames() -> None:
    assert window_boundaries([(0, 6), (4, 10), (6, 12)]) == [6, 10]
