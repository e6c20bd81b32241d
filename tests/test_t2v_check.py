"""The toy text-to-video check (vldm.jobs.t2v_check): its scoring on real toy clips, and the job on a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vldm.data.toy import generate_clip
from vldm.evaluation.caption_following import toy_prompts
from vldm.jobs.t2v_check import CheckSettings, check_report, main, motion_bucket_check


def _clips(kind: str, seeds: range) -> tuple[list[np.ndarray], list[dict]]:
    pairs = [generate_clip(seed, kind) for seed in seeds]
    return [f for f, _ in pairs], [m for _, m in pairs]


def test_motion_bucket_check_orders_fast_over_slow_clips() -> None:
    clips, metas = _clips("clean", range(40))
    speeds = np.array([m["speed"] for m in metas])
    slow = [c for c, s in zip(clips, speeds) if s < 1.6][:4]
    fast = [c for c, s in zip(clips, speeds) if s > 2.4][:4]
    assert len(slow) == len(fast) == 4
    result = motion_bucket_check(slow, fast, low_bucket=0, high_bucket=200)
    assert (result["low_bucket"], result["high_bucket"]) == (0, 200)
    assert result["high_motion"] > result["low_motion"] > 0
    assert result["ratio"] == pytest.approx(result["high_motion"] / result["low_motion"])
    assert result["ratio"] > 1.3
    static, _ = _clips("static", range(4))
    still = motion_bucket_check(static, fast, 0, 200)
    assert still["low_motion"] < 1e-5
    assert still["ratio"] is None or still["ratio"] > 1e3
    with pytest.raises(ValueError, match="same non-zero number of videos"):
        motion_bucket_check(slow, fast[:2], 0, 200)


def test_check_report_on_toy_clips_passes_and_names_its_settings() -> None:
    clips, metas = _clips("clean", range(8))
    settings = CheckSettings(num_frames=8, height=32, width=32, fps=8, count=8, seed=3)
    report = check_report(clips, [m["caption"] for m in metas], clips, clips, settings)
    assert report["settings"]["seeds"] == list(range(3, 11))
    assert report["count"] == 8 and len(report["rows"]) == 8
    assert report["colour_accuracy"] == report["direction_accuracy"] == 1.0
    assert report["passed"] is True
    assert report["motion_bucket"]["ratio"] == pytest.approx(1.0)
    mirrored = [np.ascontiguousarray(c[:, :, ::-1]) for c in clips]
    assert check_report(mirrored, [m["caption"] for m in metas], clips, clips, settings)["passed"] is False


def test_check_settings_refuse_bad_buckets() -> None:
    with pytest.raises(ValueError, match="low_bucket < high_bucket"):
        CheckSettings(num_frames=8, height=32, width=32, fps=8, low_bucket=200, high_bucket=0)
    with pytest.raises(ValueError, match=r"high_bucket must be in \[0, 255\]"):
        CheckSettings(num_frames=8, height=32, width=32, fps=8, high_bucket=300)


def test_t2v_check_job_on_the_smoke_text_to_video_run(smoke_chain: Path, tmp_path: Path) -> None:
    out = tmp_path / "check" / "t2v.json"
    returned = main(["--checkpoint", str(smoke_chain / "hq"), "--out", str(out), "--count", "2", "--num-steps", "1",
                     "--num-frames", "4", "--seed", "5"])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["count"] == 2 and len(report["rows"]) == 2
    assert [r["prompt"] for r in report["rows"]] == toy_prompts(2)
    for key in ("colour_accuracy", "direction_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["passed"] == (report["colour_accuracy"] >= 0.8 and report["direction_accuracy"] >= 0.7)
    settings = report["settings"]
    assert settings["seeds"] == [5, 6]
    assert (settings["height"], settings["width"], settings["num_frames"], settings["num_steps"]) == (32, 32, 4, 1)
    assert settings["fps"] >= 1
    buckets = report["motion_bucket"]
    assert (buckets["low_bucket"], buckets["high_bucket"]) == (0, 200)
    assert buckets["low_motion"] >= 0 and buckets["high_motion"] >= 0
    assert buckets["ratio"] is None or buckets["ratio"] == pytest.approx(buckets["high_motion"] / buckets["low_motion"])


def test_t2v_check_refuses_an_image_to_video_run(smoke_chain: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_to_video model: give a text-to-video stage"):
        main(["--checkpoint", str(smoke_chain / "i2v"), "--out", str(tmp_path / "x.json"), "--count", "1",
              "--num-steps", "1"])
