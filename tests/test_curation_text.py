"""Text scorer: RapidOCR detection separates the toy generator's burned-in words from clean and
static clips, at the paper's 7 % threshold, from 32 px frames (upscaled) to 128 px."""

from __future__ import annotations

import numpy as np
import pytest

from data_curation.records import Clip, ClipSpan
from data_curation.scorers import TextScorer, boxes_area_ratio, frame_indices
from vldm.data.toy import ToyVideoConfig, generate_clip

PAPER_THRESHOLD = 0.07  # SVD removed clips whose text area exceeds 7 % of the frame


@pytest.fixture(scope="module")
def scorer() -> TextScorer:
    return TextScorer()


def toy_clip(seed: int, kind: str, size: int) -> Clip:
    frames, meta = generate_clip(seed, kind, ToyVideoConfig(size=size, num_frames=8, fps=8))
    return Clip(video_id="feedfacefeedface", index=seed, source="toy.mp4", span=ClipSpan(0, 8), fps=8.0,
                frames=frames, caption=meta["caption"])


def test_frame_indices_and_box_area() -> None:
    assert frame_indices(8, ("first", "middle", "last")) == [0, 4, 7]
    assert frame_indices(1, ("first", "middle", "last")) == [0]
    assert frame_indices(5, ("last", "first")) == [0, 4]
    square = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], np.float32)  # 10 x 10 px incl. edges
    assert boxes_area_ratio([square], 20, 20) == pytest.approx(100 / 400)
    assert boxes_area_ratio([square, square + 5], 20, 20) == pytest.approx((100 + 100 - 25) / 400)  # union
    assert boxes_area_ratio(None, 20, 20) == 0.0 and boxes_area_ratio(np.zeros((0, 4, 2)), 4, 4) == 0.0


@pytest.mark.parametrize("size", [32, 64, 128])
def test_text_clips_score_above_every_clean_and_static_clip(scorer: TextScorer, size: int) -> None:
    n = 24
    text = [scorer.score(toy_clip(s, "text", size)) for s in range(n)]
    other = [scorer.score(toy_clip(s, kind, size)) for s in range(n) for kind in ("clean", "static")]
    min_text = min(r["text_ratio"] for r in text)
    max_other = max(r["text_ratio"] for r in other)
    assert max_other < PAPER_THRESHOLD < min_text, (size, max_other, min_text)
    assert all(r["text_boxes"] >= 1 for r in text)
    assert all(0.0 <= r["text_ratio"] <= 1.0 for r in text + other)


def test_short_side_resizes_before_detection_and_keeps_the_ratio_scale_free(scorer: TextScorer) -> None:
    clip = toy_clip(5, "text", 128)
    native = scorer.score(clip)["text_ratio"]
    half = TextScorer(short_side=64).score(clip)["text_ratio"]
    assert native > PAPER_THRESHOLD and half > PAPER_THRESHOLD
    assert abs(native - half) < 0.1  # same word, same fraction of the frame, within box jitter


def test_text_scorer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TextScorer(frames=("first", "centre"))
    with pytest.raises(ValueError):
        TextScorer(box_score_threshold=1.5)
    with pytest.raises(ValueError):
        TextScorer(min_side=16)
