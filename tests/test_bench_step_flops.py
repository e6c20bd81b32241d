"""``bench/step_flops.py``: a cached-latent step does the video step's work minus exactly the frozen encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def check_removed_exactly_the_encoders(result: dict) -> None:
    removed = result["video_step"] - result["latent_step"]
    assert removed == result["first_stage_encoder"] + result["cached_embedders"]
    assert result["first_stage_encoder"] > 0 and result["cached_embedders"] > 0
    assert result["ceiling"] == pytest.approx(result["video_step"] / result["latent_step"])


def test_toy_stage_latent_step_skips_the_encoders_and_nothing_else(tmp_path: Path) -> None:
    from bench.step_flops import main

    report = main(["--cases", "toy", "--out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text()) == report
    toy = report["toy"]
    check_removed_exactly_the_encoders(toy)
    assert 1.0 < toy["ceiling"] < 2.0


@pytest.mark.slow
def test_svd_size_ceiling_is_far_below_two() -> None:
    """At SVD's training shape the UNet's forward + backward dominates: caching removes ~17% of the FLOPs."""
    from bench.step_flops import CASES, build_on_meta, caching_flops

    model, batch, frames, size, overrides = CASES["svd"]
    result = caching_flops(build_on_meta(model, overrides), batch, frames, size)
    check_removed_exactly_the_encoders(result)
    assert result["first_stage_encoder"] > 30e12  # SD encoder on 14 frames of 576x1024
    assert 1.1 < result["ceiling"] < 1.3
