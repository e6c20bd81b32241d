"""Caption-following score (vldm.evaluation.caption_following) on real toy clips and on prompts."""

from __future__ import annotations

import numpy as np
import pytest

from vldm.data.toy import COLOURS, KINDS, ToyVideoConfig, generate_clip, still_caption
from vldm.evaluation.caption_following import (
    DIRECTIONS,
    caption_following,
    prompt_target,
    read_clip,
    toy_prompts,
)
from vldm.io.video_io import encode_mp4, read_video

SEEDS = range(48)


def _through_mp4(frames: np.ndarray, fps: int) -> np.ndarray:
    """The clip as the toy data job stores it: H.264 mp4 at the toy crf, decoded back."""
    decoded, _ = read_video(encode_mp4(frames, fps, crf=ToyVideoConfig().crf))
    assert decoded.shape == frames.shape
    return decoded


def _clips(kind: str, seeds: range = SEEDS) -> tuple[list[np.ndarray], list[dict]]:
    pairs = [generate_clip(seed, kind) for seed in seeds]
    return [_through_mp4(f, m["fps"]) for f, m in pairs], [m for _, m in pairs]


def _horizontal(seeds: range = range(200), count: int = 6) -> tuple[list[np.ndarray], list[str]]:
    """Decoded clean clips of horizontally moving (red or blue) shapes, and their captions."""
    clips, captions = [], []
    for seed in seeds:
        frames, meta = generate_clip(seed, "clean")
        if meta["direction"][1] == 0.0:
            clips.append(_through_mp4(frames, meta["fps"]))
            captions.append(meta["caption"])
        if len(clips) == count:
            return clips, captions
    raise AssertionError("too few horizontal clips among the seeds")


def test_real_toy_clips_follow_their_captions() -> None:
    cfg = ToyVideoConfig()
    assert (cfg.size, cfg.num_frames) == (32, 8)
    clips, metas = _clips("clean")
    result = caption_following(clips, [m["caption"] for m in metas])
    assert result["count"] == len(SEEDS)
    assert result["colour_accuracy"] >= 0.95, result["rows"]
    assert result["direction_accuracy"] >= 0.95, result["rows"]
    errors = [r["angle_error_deg"] for r in result["rows"]]
    assert max(errors) < 10.0
    for row, meta in zip(result["rows"], metas):
        assert row["colour"] == meta["colour"]
        assert row["speed"] == pytest.approx(meta["speed"], abs=0.3)
        assert 0.01 < row["shape_fraction"] < 0.15


def test_static_clip_reads_no_direction() -> None:
    clips, metas = _clips("static", range(6))
    for clip, meta in zip(clips, metas):
        reading = read_clip(clip)
        assert reading.colour == meta["colour"]
        assert reading.direction is None
        assert reading.speed < 0.25
    result = caption_following(clips, [f"a {m['colour']} {m['shape']} moving {COLOURS[m['colour']][2]}" for m in metas])
    assert result["colour_accuracy"] == 1.0
    assert result["direction_accuracy"] == 0.0
    assert all(r["angle_error_deg"] is None for r in result["rows"])


def test_blank_clip_reads_no_shape() -> None:
    blank = np.full((8, 32, 32, 3), (20, 30, 95), np.uint8)
    reading = read_clip(blank)
    assert (reading.colour, reading.direction, reading.shape_fraction) == (None, None, 0.0)
    result = caption_following([blank], ["a red circle moving right"])
    assert (result["colour_accuracy"], result["direction_accuracy"]) == (0.0, 0.0)


def test_mirrored_clips_read_the_opposite_direction() -> None:
    clips, captions = _horizontal()
    assert caption_following(clips, captions)["direction_accuracy"] == 1.0
    mirrored = [np.ascontiguousarray(c[:, :, ::-1]) for c in clips]
    result = caption_following(mirrored, captions)
    assert result["direction_accuracy"] == 0.0
    assert min(r["angle_error_deg"] for r in result["rows"]) > 170.0
    assert result["colour_accuracy"] == 1.0


def test_time_shuffled_clips_miss_the_direction() -> None:
    clips, captions = _horizontal()
    order = np.array([6, 3, 7, 1, 5, 0, 4, 2])  # rank correlation with 0..7 is negative
    assert np.corrcoef(order, np.arange(8))[0, 1] < 0
    result = caption_following([c[order] for c in clips], captions)
    assert result["direction_accuracy"] == 0.0
    assert all(r["angle_error_deg"] is None or r["angle_error_deg"] > 90.0 for r in result["rows"])


@pytest.mark.parametrize("colour", list(COLOURS))
def test_prompt_target_reads_each_colour_and_direction(colour: str) -> None:
    rgb, direction, words = COLOURS[colour]
    for prompt in (f"a {colour} square moving {words}", f"A {colour.upper()} circle moves {words} slowly on a dark red background"):
        target = prompt_target(prompt)
        assert target.colour == colour
        assert target.direction == direction


def test_prompt_target_takes_the_longest_direction_phrase() -> None:
    assert prompt_target("a red circle moving up and to the right").direction == DIRECTIONS["up and to the right"]
    assert prompt_target("a blue triangle moving down and to the left").direction == DIRECTIONS["down and to the left"]
    assert prompt_target("a green square moves up on a dark green background").colour == "green"


@pytest.mark.parametrize("prompt, missing", [
    ("a purple circle moving right", "colour"),
    ("a red circle on a dark blue background", "direction"),
    ("a red and blue circle moving left", "colour"),
    ("a red circle moving up and left", "direction"),
])
def test_prompt_target_refuses_prompts_outside_the_vocabulary(prompt: str, missing: str) -> None:
    with pytest.raises(ValueError, match="exactly one toy colour and one direction") as err:
        prompt_target(prompt)
    assert "up and to the right" in str(err.value) and "magenta" in str(err.value)


def test_caption_following_refuses_mismatched_lengths() -> None:
    frames, meta = generate_clip(0, "clean")
    with pytest.raises(ValueError, match="1 videos but 2 prompts"):
        caption_following([frames], [meta["caption"], meta["caption"]])
    with pytest.raises(ValueError, match="at least one video"):
        caption_following([], [])


def test_toy_prompts_are_not_training_captions() -> None:
    prompts = toy_prompts(24)
    assert len(prompts) == 24 and len(set(prompts)) == len(COLOURS) * 3  # every colour x shape, then again
    assert toy_prompts(24) == prompts
    training = set()
    for seed in range(300):
        for kind in KINDS:
            meta = generate_clip(seed, kind)[1]
            training.update({meta["caption"], still_caption(meta)})
    assert not training & set(prompts)
    for prompt in prompts:
        assert not {"background", "slowly", "steadily", "quickly"} & set(prompt.split())
        target = prompt_target(prompt)
        assert target.direction == COLOURS[target.colour][1]
    counts = {c: sum(prompt_target(p).colour == c for p in prompts) for c in COLOURS}
    assert min(counts.values()) >= 4, counts
