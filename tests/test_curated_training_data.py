"""Curated clips as training data: the held-out validation split, motion buckets and captions in the
shard json, the curated_hq data config (filters, hints, validation) and small-input quantile cuts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from data_curation.config import compose_curate
from data_curation.filters import FilterSpec, apply_filters, filter_specs
from data_curation.heldout import heldout_videos
from data_curation.manifest import read_manifest
from data_curation.pipeline import curate
from data_curation.scorers.motion import motion_bucket_id
from data_curation.synthetic import RawToyConfig, write_raw_toy_videos
from tests.helpers.configs import compose_train
from tests.helpers.repo import REPO
from tests.helpers.shards import tar_samples
from vldm.data.shards import VideoClipDataset
from vldm.training.datamodule import ShardDataModule

CURATE_FLAGS = ["prefilter.min_short_side=32", "clips.min_seconds=1", "clips.max_seconds=1", "progress=false",
                "report=false"]


def _curate(raw: Path, out: Path, *extra: str) -> tuple[dict[str, Any], list[str]]:
    lines: list[str] = []
    result = curate(compose_curate([f"input={raw}", f"output={out}", *CURATE_FLAGS, *extra]), notify=lines.append)
    return result.summary, lines


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """6 raw toy videos (32 px) curated as the demo does; video_0001 has no caption sidecar."""
    root = tmp_path_factory.mktemp("curated_data")
    write_raw_toy_videos(root / "raw", count=6, seed=7, cfg=RawToyConfig(size=32))
    (root / "raw" / "video_0001.txt").unlink()
    summary, lines = _curate(root / "raw", root / "out", "heldout_fraction=0.3")
    rows = read_manifest(root / "out" / "manifest.parquet")
    return {"root": root, "out": root / "out", "summary": summary, "lines": lines, "rows": rows,
            "clips": {r["clip_id"]: r for r in rows if r["row_type"] == "clip"}}


def _metas(shard_dir: Path) -> dict[str, dict[str, Any]]:
    return {key: json.loads(s["json"]) for shard in tar_samples(shard_dir).values() for key, s in shard.items()}


def test_curation_holds_out_whole_videos_for_validation(curated: dict[str, Any]) -> None:
    clips = curated["clips"]
    kept = {cid for cid, r in clips.items() if r["kept"]}
    train, held = _metas(curated["out"] / "shards"), _metas(curated["out"] / "heldout")
    assert held and train and not set(train) & set(held)
    assert set(train) | set(held) == kept
    assert {clips[c]["split"] for c in held} == {"heldout"} and {clips[c]["split"] for c in train} == {"train"}
    held_videos = {clips[c]["video_id"] for c in held}
    assert not held_videos & {clips[c]["video_id"] for c in train}  # all clips of a video on one side
    assert curated["summary"]["heldout"] == len(held) and curated["summary"]["heldout_shards"] == 1
    assert held_videos == heldout_videos({clips[c]["video_id"] for c in kept}, 0.3)


def test_heldout_choice_depends_only_on_the_video() -> None:
    ids = [f"{i:016x}" for i in range(400)]
    every = heldout_videos(ids, 0.1)
    assert 20 <= len(every) <= 60
    assert heldout_videos(ids[:200], 0.1) == every & set(ids[:200])  # adding videos moves none
    assert len(heldout_videos(ids[:2], 0.01)) == 1 and heldout_videos(ids[:1], 0.5) == set()
    assert heldout_videos(ids, 0.0) == set()
    with pytest.raises(ValueError, match="heldout_fraction must be in"):
        heldout_videos(ids, 1.0)


@pytest.mark.parametrize("flag, message", [("heldout_fraction=1.5", "heldout_fraction must be in"),
                                           ("motion_bucket_scale=0", "motion_bucket_scale must be positive")])
def test_bad_split_or_bucket_settings_stop_the_run_first(tmp_path: Path, flag: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _curate(tmp_path / "raw_not_listed", tmp_path / "out", flag)
    assert not (tmp_path / "out").exists()


def test_curated_json_carries_a_motion_bucket_the_reader_uses(curated: dict[str, Any]) -> None:
    metas = {**_metas(curated["out"] / "shards"), **_metas(curated["out"] / "heldout")}
    for meta in metas.values():
        assert meta["motion_bucket_id"] == motion_bucket_id(meta["motion_score"], 0.1)
        assert 0 <= meta["motion_bucket_id"] <= 255
    assert len({m["motion_bucket_id"] for m in metas.values()}) > 3  # not one constant bucket
    dataset = VideoClipDataset(str(curated["out"] / "shards"), num_frames=6, size=32, repeat=False)
    read = {s["__key__"]: s["motion_bucket_id"] for s in dataset}
    assert read == {key: metas[key]["motion_bucket_id"] for key in read} and len(read) > 3


def test_motion_bucket_mapping_is_monotone_and_clamped() -> None:
    scores = [0.0, 0.001, 0.02, 0.05, 0.0999, 0.1, 0.5, 3.0]
    buckets = [motion_bucket_id(s, 0.1) for s in scores]
    assert buckets == sorted(buckets) and buckets[0] == 0 and buckets[-3:] == [255, 255, 255]
    assert motion_bucket_id(0.05, 0.1) == 128 and motion_bucket_id(-1.0, 0.1) == 0
    assert motion_bucket_id(None, 0.1) is None and motion_bucket_id(float("nan"), 0.1) is None
    with pytest.raises(ValueError, match="motion_bucket_scale must be positive"):
        motion_bucket_id(0.1, 0.0)


def test_uncaptioned_clips_train_on_the_empty_caption_and_are_counted(curated: dict[str, Any]) -> None:
    clips = curated["clips"]
    uncaptioned = [c for c, r in clips.items() if r["kept"] and r["caption"] is None]
    assert uncaptioned and curated["summary"]["uncaptioned_kept"] == len(uncaptioned)
    assert any(line.startswith(f"{len(uncaptioned)} of ") and 'empty caption ""' in line for line in curated["lines"])
    captions = {}
    for shards in ("shards", "heldout"):
        dataset = VideoClipDataset(str(curated["out"] / shards), num_frames=6, size=32, repeat=False)
        captions.update({s["__key__"]: s["txt"] for s in dataset})
    assert {captions[c] for c in uncaptioned} == {""}
    assert all(captions[c] == clips[c]["caption"] for c in captions if c not in uncaptioned)


def _curated_hq(curated_dir: Path, data_dir: Path, *extra: str) -> Any:
    cfg = compose_train(["experiment=toy", "stage=hq", "data=curated_hq", f"paths.curated_dir={curated_dir}",
                         f"paths.data_dir={data_dir}", *extra])
    return instantiate(cfg.data, _convert_="object")


def test_curated_hq_validates_on_the_heldout_clips(curated: dict[str, Any], tmp_path: Path) -> None:
    data = _curated_hq(curated["out"], tmp_path / "no_toy_data")
    data.setup("fit")
    keys = [key for batch in data.val_dataloader() for key in batch["__key__"]]
    held = _metas(curated["out"] / "heldout")
    assert keys and set(keys) <= set(held)


def test_readme_filter_override_adds_to_the_curated_filter(curated: dict[str, Any], tmp_path: Path) -> None:
    # README: data.filter='{motion_score: {min: 0.002}}' -> the shell passes the value unquoted
    data = _curated_hq(curated["out"], tmp_path, "data.filter={motion_score: {min: 0.002}}")
    assert data.filter == {"text_ratio": {"max": 0.07}, "static": False, "motion_score": {"min": 0.002}}
    with pytest.raises(InstantiationException, match="got the string .*quote it once for the shell only"):
        _curated_hq(curated["out"], tmp_path, "data.filter='{motion_score: {min: 0.002}}'")


def test_missing_curated_shards_point_at_curation(tmp_path: Path) -> None:
    data = _curated_hq(tmp_path / "not_curated", tmp_path)
    with pytest.raises(FileNotFoundError, match="not_curated/shards.*python -m data_curation input=") as err:
        data.setup("fit")
    assert "vldm.jobs.toy_data" not in str(err.value)


def test_a_validation_set_with_no_sample_is_refused(curated: dict[str, Any], tmp_path: Path) -> None:
    from tests.helpers.shards import counting_shard

    counting_shard(tmp_path / "val-000000.tar", {"a": 8, "b": 8})  # toy-like clips: json without scores
    data = ShardDataModule(str(curated["out"] / "shards"), str(tmp_path / "val-*.tar"), num_frames=6,
                           filter={"text_ratio": {"max": 0.07}, "static": False}, val_samples=2)
    with pytest.raises(ValueError, match=r"validation set is empty: none of 2 samples passes.*2 of 2 lack "
                                         r"'text_ratio', 2 of 2 lack 'static'.*heldout"):
        data.setup("fit")


def test_changing_the_bucket_scale_rewrites_the_shards_json(curated: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(curated["out"], out)
    _curate(curated["root"] / "raw", out, "heldout_fraction=0.3", "motion_bucket_scale=0.05")
    for shards in ("shards", "heldout"):
        for meta in _metas(out / shards).values():
            assert meta["motion_bucket_id"] == motion_bucket_id(meta["motion_score"], 0.05)


def test_quantile_cuts_need_min_clips() -> None:
    rows = [{"m": v} for v in (0.3, 0.1, 0.4, 0.2)]  # four good clips
    spec = FilterSpec("motion", "m", drop_lowest=0.25, min_clips=20)
    out = apply_filters(rows, [spec])
    assert all(out.kept) and "fewer than its min_clips 20" in out.skipped["motion"]
    mixed = apply_filters(rows, [FilterSpec("motion", "m", min=0.15, drop_lowest=0.25, min_clips=20)])
    assert mixed.kept == [True, False, True, True]  # min still applies
    many = [{"m": float(v)} for v in range(20)]
    assert sum(not k for k in apply_filters(many, [spec]).kept) == 5  # floor(0.25 * 20)
    cfg = compose_curate(["input=x", "output=y"])
    defaults = {s.name: s.min_clips for s in filter_specs(cfg.filters) if s.drop_lowest}
    assert defaults == {"motion": 20, "clip_similarity": 20}


def test_docs_manifest_columns_are_the_manifest_columns(curated: dict[str, Any]) -> None:
    text = (REPO / "docs" / "curation.md").read_text()
    table = text[text.index("## Manifest"):text.index("Error codes")]
    named = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            named |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    columns = {key for row in curated["rows"] for key in row}
    clip_only = {"aesthetic", "clip_similarity"}  # CLIP scorer columns: absent without weights
    assert named - clip_only <= columns, sorted(named - clip_only - columns)
    assert {"transitions", "split", "motion_bucket_id"} <= named


def test_a_null_caption_reads_as_the_empty_caption(tmp_path: Path) -> None:
    import webdataset as wds

    from vldm.io.video_io import encode_mp4
    from vldm.data.shards import ImageDataset

    frames = np.full((8, 16, 16, 3), 100, np.uint8)
    with wds.TarWriter(str(tmp_path / "clips-000000.tar")) as writer:
        writer.write({"__key__": "a", "mp4": encode_mp4(frames, 8.0),
                      "json": {"caption": None, "fps": 8.0, "motion_bucket_id": 200}})
        writer.write({"__key__": "b", "png": cv2.imencode(".png", frames[0])[1].tobytes(), "json": {"caption": None}})
    (video,) = VideoClipDataset(str(tmp_path), num_frames=4, size=16, repeat=False)
    (image,) = ImageDataset(str(tmp_path), size=16, repeat=False)
    assert (video["txt"], video["motion_bucket_id"], image["txt"]) == ("", 200, "")
