"""End to end curation on raw toy videos with bad files: rows, error codes, shards, summary, config."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_curation.config import compose_curate
from data_curation.manifest import read_manifest
from data_curation.pipeline import curate, list_inputs
from data_curation.records import Clip, video_id
from data_curation.synthetic import BAD_FILES, write_raw_toy_videos
from tests.helpers.repo import REPO
from tests.helpers.shards import tar_samples

class RaisingScorer:
    """A scorer that fails on every clip (its input must become a ``scorer_error`` row)."""

    name = "raising"
    available = True
    unavailable_reason = ""

    def score(self, clip: Clip) -> dict[str, float]:
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("curate")
    write_raw_toy_videos(root / "in", count=12, seed=3, bad_files=True)
    (root / "in" / "readme.md").write_text("not a video\n")
    (root / "in" / ".hidden.mp4").write_bytes(b"ignored")
    (root / "in" / "lost.mp4").symlink_to(root / "nowhere.mp4")  # dangling link
    from vldm.io.video_io import write_mp4

    write_mp4(root / "in" / "short.mp4", np.full((6, 64, 64, 3), 90, np.uint8), fps=8)  # 0.75 s: prefiltered
    (root / "in" / "sub").mkdir()
    (root / "in" / "sub" / "clip.json").write_text(json.dumps({"caption": "alone"}))  # no video beside it
    cfg = compose_curate([f"input={root / 'in'}", f"output={root / 'out'}", "shards.clips_per_shard=4",
                          "progress=false"])
    lines: list[str] = []
    result = curate(cfg, notify=lines.append)
    return {"root": root, "out": root / "out", "result": result, "lines": lines,
            "rows": read_manifest(root / "out" / "manifest.parquet")}


def test_every_input_is_one_video_row_with_the_right_error(run: dict[str, Any]) -> None:
    inputs = sorted(p.relative_to(run["root"] / "in").as_posix() for p in (run["root"] / "in").rglob("*")
                    if (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and p.suffix != ".txt")
    video_rows = [r for r in run["rows"] if r["row_type"] == "video"]
    assert sorted(r["source"] for r in video_rows) == inputs
    assert len(video_rows) == 12 + len(BAD_FILES) + 4  # + readme.md, sub/clip.json, lost.mp4, short.mp4
    by_source = {r["source"]: r for r in video_rows}
    extra = {"readme.md": "not_a_video", "sub/clip.json": "not_a_video", "lost.mp4": "missing"}
    for name, code in {**BAD_FILES, **extra}.items():
        assert by_source[name]["error_code"] == code, (name, by_source[name]["error_message"])
        assert by_source[name]["error_message"]
        assert by_source[name]["kept"] is False
    short = by_source["short.mp4"]
    assert (short["dropped_by"], short["error_code"], short["kept"], short["num_frames"]) == ("too_short", None, False, 6)
    assert not [r for r in run["rows"] if r["row_type"] == "clip" and r["source"] == "short.mp4"]
    good = [r for r in video_rows if r["source"].startswith("video_")]
    assert all(r["error_code"] is None for r in good), [r["error_message"] for r in good]
    assert all(r["video_id"] == video_id(r["source"]) for r in video_rows)
    assert all(r["caption"] for r in good)  # the .txt sidecars
    assert run["result"].summary["errors"] == dict(Counter(r["error_code"] for r in video_rows if r["error_code"]))
    assert run["lines"][-1].startswith(f"curated {len(video_rows)} inputs: 7 errors (")


def test_clip_rows_are_consistent(run: dict[str, Any]) -> None:
    clips = [r for r in run["rows"] if r["row_type"] == "clip"]
    assert len(clips) >= 12
    assert len({r["clip_id"] for r in clips}) == len(clips)
    for r in clips:
        assert 0 <= r["start_frame"] < r["end_frame"]
        assert r["end_s"] == pytest.approx(r["end_frame"] / r["fps"])
        assert r["kept"] == (r["dropped_by"] is None)
        if r["dropped_by"]:
            assert r["dropped_by_all"].split(",")[0] == r["dropped_by"]
        assert r["motion_score"] is not None and r["text_ratio"] is not None
        assert (r["shard"] is not None) == r["kept"]
    kept_videos = {r["video_id"] for r in clips if r["kept"]}
    assert {r["video_id"] for r in run["rows"] if r["row_type"] == "video" and r["kept"]} == kept_videos
    # sorted: video row first, then its clips by index
    keys = [(r["video_id"], r["row_type"] != "video", r["clip_index"] or 0) for r in run["rows"]]
    assert keys == sorted(keys)
    thumbs = sorted(p.stem for p in (run["out"] / "work" / "thumbs").glob("*.jpg"))
    assert thumbs == sorted(r["clip_id"] for r in clips)


def test_each_kept_clip_is_in_the_shards_exactly_once(run: dict[str, Any]) -> None:
    from vldm.io.video_io import read_video

    clips = {r["clip_id"]: r for r in run["rows"] if r["row_type"] == "clip"}
    kept = {cid for cid, r in clips.items() if r["kept"]}
    train, heldout = tar_samples(run["out"] / "shards"), tar_samples(run["out"] / "heldout")
    held = sum(clips[cid]["split"] == "heldout" for cid in kept)
    assert len(train) == -(-(len(kept) - held) // 4) == run["result"].summary["shards"]
    assert len(heldout) == -(-held // 4) == run["result"].summary["heldout_shards"]
    shards = {**train, **heldout}
    seen = [key for samples in shards.values() for key in samples]
    assert sorted(seen) == sorted(kept)  # every kept clip once, nothing else
    assert not list((run["out"] / "shards").glob("*.tmp"))
    for name, samples in shards.items():
        for key, sample in samples.items():
            assert set(sample) == {"mp4", "json"}
            meta = json.loads(sample["json"])
            row = clips[key]
            assert row["shard"] == name
            for field in ("clip_id", "video_id", "source", "start_frame", "end_frame", "start_s", "end_s",
                          "caption", "fps", "motion_score", "static", "text_ratio"):
                assert field in meta, field
            assert (meta["clip_id"], meta["start_frame"], meta["end_frame"]) == (key, row["start_frame"], row["end_frame"])
            assert meta["motion_score"] == row["motion_score"]
            frames, fps = read_video(sample["mp4"])
            assert frames.shape == (row["end_frame"] - row["start_frame"], 64, 64, 3)
            assert fps == pytest.approx(row["fps"])


def test_summary_counts_equal_manifest_counts(run: dict[str, Any]) -> None:
    summary = json.loads((run["out"] / "summary.json").read_text())
    clips = [r for r in run["rows"] if r["row_type"] == "clip"]
    first = Counter(r["dropped_by"] for r in clips if r["dropped_by"])
    every = Counter(name for r in clips if r["dropped_by_all"] for name in r["dropped_by_all"].split(","))
    for f in summary["filters"]:
        assert f["removed_first"] == first.get(f["name"], 0), f
        assert f["removed"] == every.get(f["name"], 0), f
    assert {f["name"] for f in summary["filters"] if f["skipped"]} == {"aesthetic", "clip_similarity"}
    assert sum(first.values()) == summary["dropped"] == len(clips) - summary["kept"]
    videos = [r for r in run["rows"] if r["row_type"] == "video"]
    assert summary["videos_dropped_by"] == dict(Counter(r["dropped_by"] for r in videos if r["dropped_by"]))
    assert summary["videos_dropped_by"]["too_short"] == 1
    assert summary["clips"] == len(clips) and summary["kept"] == sum(r["kept"] for r in clips)
    motion = next(f for f in summary["filters"] if f["name"] == "motion")
    assert 0 < motion["removed"] <= int(0.25 * len(clips) + 1e-9)  # ties at the cut are kept
    assert (run["out"] / "report.html").stat().st_size > 1000
    assert "input:" in (run["out"] / "config.yaml").read_text()
    assert any(line.startswith("clip scorer skipped") for line in run["lines"])


def test_list_inputs_sidecars_hidden_and_extensions(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.txt").write_text(" a caption \n")
    (tmp_path / "b.mkv").write_bytes(b"x")
    (tmp_path / "b.json").write_text(json.dumps({"caption": "from json"}))
    (tmp_path / "notes.txt").write_text("no video called notes")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.mp4").write_bytes(b"x")
    inputs, ignored = list_inputs(tmp_path)
    assert [(i.source, i.caption) for i in inputs] == [("a.mp4", "a caption"), ("b.mkv", "from json"),
                                                       ("notes.txt", None)]
    assert ignored == [] and inputs[0].stamp["size_bytes"] == 1
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    inputs, _ = list_inputs(tmp_path)
    assert [i.source for i in inputs] == ["a.mp4", "b.mkv", "gone.mp4", "notes.txt"]
    assert inputs[2].stamp == {"size_bytes": -1, "mtime_ns": -1}
    inputs, ignored = list_inputs(tmp_path, extensions=["MP4", ".mkv"])
    assert [i.source for i in inputs] == ["a.mp4", "b.mkv", "gone.mp4"] and ignored == ["notes.txt"]


def test_output_settings_and_scorer_errors(tmp_path: Path) -> None:
    write_raw_toy_videos(tmp_path / "in", count=2, seed=5)
    cfg = compose_curate([f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "progress=false",
                          "report=false", "shards.short_side=32", "shards.fps=4", "shards.max_frames=5",
                          "filters.motion=null", "filters.static=null", "filters.text=null"])
    curate(cfg, notify=lambda line: None)
    samples = [s for shard in tar_samples(tmp_path / "out" / "shards").values() for s in shard.values()]
    assert samples
    from vldm.io.video_io import read_video

    for sample in samples:
        meta = json.loads(sample["json"])
        frames, fps = read_video(sample["mp4"])
        assert frames.shape[1:] == (32, 32, 3) and fps == pytest.approx(4.0)
        want = min(5, len(range(meta["start_frame"], meta["end_frame"], 2)))
        assert frames.shape[0] == meta["num_frames"] == want
        assert (meta["fps"], meta["source_fps"], meta["frame_stride"]) == (4.0, 8.0, 2)
    # a scorer that raises turns its input into an error row, the run still completes
    cfg = compose_curate([f"input={tmp_path / 'in'}", f"output={tmp_path / 'out2'}", "progress=false",
                          "report=false", "+scorers.raising={_target_: tests.test_curation_pipeline.RaisingScorer}"])
    result = curate(cfg, notify=lambda line: None)
    videos = [r for r in result.rows if r["row_type"] == "video"]
    assert [r["error_code"] for r in videos] == ["scorer_error", "scorer_error"]
    assert "raising" in videos[0]["error_message"] and "boom" in videos[0]["error_message"]
    assert result.summary["kept"] == 0 and not list((tmp_path / "out2" / "shards").glob("*.tar"))


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_curate(["input=a", "output=b", "bogus=1"])
    with pytest.raises(ConfigCompositionException):
        compose_curate(["input=a", "output=b", "shards.clip_per_shard=3"])
    cfg = compose_curate([f"input={tmp_path}", f"output={tmp_path / 'o'}", "+bogus=1"])
    with pytest.raises(ValueError, match="unknown curation config keys"):
        curate(cfg)
    proc = subprocess.run([sys.executable, "-m", "data_curation", f"input={tmp_path}", f"output={tmp_path / 'o'}",
                           "filters.text.maxx=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "filters.text.maxx" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_dataclass_sections_take_the_dataclass_defaults_and_refuse_mistyped_keys(tmp_path: Path) -> None:
    from dataclasses import asdict

    from hydra.errors import ConfigCompositionException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from data_curation.config import section
    from data_curation.cuts import CutDetectorConfig
    from data_curation.shard_writer import OutputConfig

    cfg = compose_curate(["input=a", "output=b", "cuts.cut_threshold=0.5"])
    assert instantiate(cfg.cuts) == CutDetectorConfig(cut_threshold=0.5)
    assert OmegaConf.to_container(cfg.shards) == asdict(OutputConfig())
    assert compose_curate(["input=a", "output=b", "cuts=null", "prefilter=null"]).cuts is None
    for override, message in [("cuts.cut_treshold=0.5", "Key 'cut_treshold' not in 'CutDetectorConfig'"),
                              ("cuts.step=four", "could not be converted to Integer")]:
        with pytest.raises(ConfigCompositionException) as err:
            compose_curate(["input=a", "output=b", override])
        assert message in str(err.value.__cause__)
    with pytest.raises(Exception, match="Key 'cut_treshold' not in 'CutDetectorConfig'"):  # a yaml setting it
        OmegaConf.merge(section(CutDetectorConfig, target=True), {"cut_treshold": 0.5})
    cfg = compose_curate([f"input={tmp_path}", f"output={tmp_path / 'o'}", "+cuts.cut_treshold=0.5"])  # `+` adds it
    with pytest.raises(ValueError, match=r"unknown cuts keys \['cut_treshold'\]: CutDetectorConfig"):
        curate(cfg)
    proc = subprocess.run([sys.executable, "-m", "data_curation", f"input={tmp_path}", f"output={tmp_path / 'o'}",
                           "cuts.cut_treshold=0.5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "cut_treshold" in proc.stderr and "CutDetectorConfig" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_records_journal_the_inputs(run: dict[str, Any]) -> None:
    records = sorted((run["out"] / "work" / "videos").glob("*.json"))
    assert len(records) == len([r for r in run["rows"] if r["row_type"] == "video"])
    for path in records:
        record = json.loads(path.read_text())
        assert path.stem == record["video_id"] == video_id(record["source"])
        path = run["root"] / "in" / record["source"]
        assert record["stamp"]["size_bytes"] == (path.stat().st_size if path.exists() else -1)
