"""Webdataset shard pipelines: decoding, skipping bad samples, filtering, splitting, data module."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from vldm.training.datamodule import ShardDataModule
from vldm.data.shards import ImageDataset, VideoClipDataset
from vldm.io.tar_shards import resolve_shards
from vldm.data.toy import ToyVideoConfig, generate_clip
from vldm.io.video_io import encode_mp4

KINDS = ["clean", "static", "clean", "text", "clean", "cut"]


def clip_sample(key: str, seed: int, kind: str = "clean", cfg: ToyVideoConfig = ToyVideoConfig()) -> dict[str, Any]:
    frames, meta = generate_clip(seed, kind, cfg)
    return {"__key__": key, "mp4": encode_mp4(frames, cfg.fps), "json": meta}


def write_shard(path: Path, samples: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def write_video_shards(root: Path, num_shards: int, per_shard: int) -> list[str]:
    """Shards of toy clips whose kinds cycle through KINDS; keys are s{shard}_{i}."""
    for s in range(num_shards):
        samples = [clip_sample(f"s{s}_{i}", 100 * s + i, KINDS[(s * per_shard + i) % len(KINDS)]) for i in range(per_shard)]
        write_shard(root / f"train-{s:06d}.tar", samples)
    return [f"s{s}_{i}" for s in range(num_shards) for i in range(per_shard)]


def keys_of(dataset: Any) -> list[str]:
    return [sample["__key__"] for sample in dataset]


def test_video_dataset_yields_shapes_ranges_and_conditioning(tmp_path: Path) -> None:
    write_video_shards(tmp_path, num_shards=1, per_shard=3)
    ds = VideoClipDataset(str(tmp_path), num_frames=8, size=32, repeat=False, shuffle_shards=False)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == ["s0_0", "s0_1", "s0_2"]
    for sample, seed in zip(samples, range(3)):
        _, meta = generate_clip(seed, KINDS[seed])
        video = sample["video"]
        assert video.shape == (8, 3, 32, 32) and video.dtype == torch.float32
        assert -1.0 <= video.min() < -0.5 and 0.5 < video.max() <= 1.0
        assert sample["txt"] == meta["caption"]
        assert sample["fps_id"] == 7 and sample["motion_bucket_id"] == meta["motion_bucket_id"]
    # static clip (second sample): all frames identical after decoding
    static = samples[1]["video"]
    assert (static - static[0]).abs().max() < 0.05
    assert ds.num_skipped == 0


def test_resize_and_center_crop_non_square(tmp_path: Path) -> None:
    frames = np.zeros((8, 32, 64, 3), np.uint8)
    frames[:, :, 16:48] = 255  # white centre square on black, exactly the centre crop
    write_shard(tmp_path / "a.tar", [{"__key__": "wide", "mp4": encode_mp4(frames, 24), "json": {"caption": "w"}}])
    (sample,) = list(VideoClipDataset(str(tmp_path / "a.tar"), num_frames=4, size=16, repeat=False))
    assert sample["video"].shape == (4, 3, 16, 16)
    assert sample["video"][:, :, 2:-2, 2:-2].min() > 0.8  # crop keeps only the white centre
    assert sample["fps_id"] == 23 and sample["motion_bucket_id"] == 127  # json lacks fps / bucket


def test_corrupt_and_short_clips_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [clip_sample(f"good{i}", i) for i in range(4)]
    bad = {"__key__": "bad", "mp4": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "json": {"caption": "x"}}
    write_shard(tmp_path / "mixed.tar", good[:2] + [bad] + good[2:])
    ds = VideoClipDataset(str(tmp_path / "mixed.tar"), num_frames=8, size=32, repeat=False)
    with caplog.at_level(logging.WARNING, logger="vldm.data.shards"):
        assert keys_of(ds) == ["good0", "good1", "good2", "good3"]
    assert ds.num_skipped == 1 and copy.deepcopy(ds).num_skipped == 1
    assert "'bad'" in caplog.text and "cannot decode" in caplog.text

    short = VideoClipDataset(str(tmp_path / "mixed.tar"), num_frames=9, size=32, repeat=False)
    with caplog.at_level(logging.WARNING, logger="vldm.data.shards"):
        assert keys_of(short) == []
    assert short.num_skipped == 5 and "only 8 frames, need 9" in caplog.text


def test_skips_in_worker_processes_reach_the_parent(tmp_path: Path) -> None:
    bad = {"__key__": "bad", "mp4": b"garbage" * 50, "json": {"caption": "x"}}
    write_shard(tmp_path / "a-0.tar", [clip_sample("a0", 0), bad])
    write_shard(tmp_path / "a-1.tar", [clip_sample("a1", 1), clip_sample("a2", 2)])
    ds = VideoClipDataset(str(tmp_path), num_frames=8, size=32, repeat=False)
    keys = [k for batch in DataLoader(ds, batch_size=2, num_workers=2) for k in batch["__key__"]]
    assert sorted(keys) == ["a0", "a1", "a2"] and ds.num_skipped == 1


@pytest.mark.parametrize("make", ["missing", "empty", "glob"])
def test_missing_or_empty_shards_raise_helpful_error(tmp_path: Path, make: str) -> None:
    (tmp_path / "empty").mkdir()
    spec = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "glob": tmp_path / "empty" / "train-*.tar"}[make]
    with pytest.raises(FileNotFoundError, match=r"python -m vldm.jobs.toy_data --root data/toy") as info:
        VideoClipDataset(str(spec), num_frames=8, size=32)
    assert str(spec) in str(info.value)


def test_resolve_shards_patterns(tmp_path: Path) -> None:
    for i in range(4):
        write_shard(tmp_path / f"train-{i:06d}.tar", [clip_sample(f"k{i}", i)])
    names = [str(tmp_path / f"train-{i:06d}.tar") for i in range(4)]
    assert resolve_shards(tmp_path) == names
    assert resolve_shards(str(tmp_path / "train-*.tar")) == names
    assert resolve_shards(str(tmp_path / "train-{000001..000002}.tar")) == names[1:3]
    assert resolve_shards([names[3], str(tmp_path / "train-00000[01].tar")]) == [names[3]] + names[:2]
    assert resolve_shards("pipe:cat x.tar") == ["pipe:cat x.tar"]
    with pytest.raises(FileNotFoundError, match="train-000004.tar' does not exist"):
        resolve_shards(str(tmp_path / "train-{000003..000007}.tar"))


def test_filters_on_values_and_ranges(tmp_path: Path) -> None:
    write_video_shards(tmp_path, num_shards=2, per_shard=6)
    clean = list(VideoClipDataset(str(tmp_path), 8, 32, repeat=False, filter={"kind": "clean"}))
    assert len(clean) == 6
    assert all("stays still" not in s["txt"] for s in clean)
    assert {k for k in keys_of(VideoClipDataset(str(tmp_path), 8, 32, repeat=False, filter={"kind": "clean"}))} == {
        f"s{s}_{i}" for s in range(2) for i in range(6) if KINDS[(s * 6 + i) % 6] == "clean"
    }
    fast = list(VideoClipDataset(str(tmp_path), 8, 32, repeat=False, filter={"motion_bucket_id": {"min": 100, "max": 255}}))
    assert fast and all(100 <= s["motion_bucket_id"] <= 255 for s in fast)
    assert len(fast) < 12
    assert list(VideoClipDataset(str(tmp_path), 8, 32, repeat=False, filter={"aesthetic": {"min": 0}})) == []
    # repeating a stream that can never yield anything fails loudly instead of spinning forever
    with pytest.raises(RuntimeError, match="no usable samples"):
        next(iter(VideoClipDataset(str(tmp_path), 8, 32, repeat=True, filter={"kind": "blurry"})))


def test_two_workers_yield_every_sample_exactly_once(tmp_path: Path) -> None:
    all_keys = write_video_shards(tmp_path, num_shards=3, per_shard=4)
    for shards in (str(tmp_path), str(tmp_path / "train-000000.tar")):  # by shard / by sample split
        ds = VideoClipDataset(shards, num_frames=8, size=16, repeat=False, shuffle_buffer=5)
        loader = DataLoader(ds, batch_size=3, num_workers=2)
        keys = [k for batch in loader for k in batch["__key__"]]
        expected = all_keys if shards == str(tmp_path) else all_keys[:4]
        assert sorted(keys) == sorted(expected)


def test_ddp_ranks_partition_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    all_keys = write_video_shards(tmp_path, num_shards=3, per_shard=2)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        seen.append(keys_of(VideoClipDataset(str(tmp_path), 8, 16, repeat=False)))
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(all_keys)


def test_repeat_reshuffles_per_epoch_and_is_deterministic(tmp_path: Path) -> None:
    all_keys = write_video_shards(tmp_path, num_shards=4, per_shard=1)

    def first(n: int, **kw: Any) -> list[str]:
        it = iter(VideoClipDataset(str(tmp_path), 8, 16, repeat=True, **kw))
        return [next(it)["__key__"] for _ in range(n)]

    stream = first(12, seed=3)
    assert stream == first(12, seed=3)
    epochs = [stream[i : i + 4] for i in range(0, 12, 4)]
    assert all(sorted(e) == sorted(all_keys) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # shard order changes between epochs
    assert first(12, seed=4) != stream
    unshuffled = VideoClipDataset(str(tmp_path), 8, 16, repeat=False, shuffle_shards=False)
    assert keys_of(unshuffled) == all_keys


def test_shuffle_buffer_permutes_within_a_pass(tmp_path: Path) -> None:
    all_keys = write_video_shards(tmp_path, num_shards=1, per_shard=10)
    plain = keys_of(VideoClipDataset(str(tmp_path), 8, 16, repeat=False))
    mixed = keys_of(VideoClipDataset(str(tmp_path), 8, 16, repeat=False, shuffle_buffer=6, seed=1))
    assert plain == all_keys and sorted(mixed) == sorted(all_keys) and mixed != plain
    assert keys_of(VideoClipDataset(str(tmp_path), 8, 16, repeat=False, max_samples=3)) == all_keys[:3]


def write_image_shard(path: Path, n: int) -> None:
    import cv2

    samples = []
    for i in range(n):
        frames, meta = generate_clip(i, "clean")
        png = cv2.imencode(".png", frames[0][..., ::-1])[1].tobytes()
        samples.append({"__key__": f"img{i}", "png": png, "json": meta})
    samples.insert(1, {"__key__": "broken", "png": b"\x89PNG not really", "json": {"caption": "?"}})
    write_shard(path, samples)


def test_image_dataset(tmp_path: Path) -> None:
    write_image_shard(tmp_path / "images" / "train-000000.tar", 3)
    ds = ImageDataset(str(tmp_path / "images"), size=16, repeat=False)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == ["img0", "img1", "img2"] and ds.num_skipped == 1
    for i, sample in enumerate(samples):
        assert sample["jpg"].shape == (3, 16, 16) and sample["jpg"].dtype == torch.float32
        assert -1.0 <= sample["jpg"].min() and sample["jpg"].max() <= 1.0
        assert sample["txt"] == generate_clip(i, "clean")[1]["caption"]


def test_datamodule_video_batches_and_fixed_validation(tmp_path: Path) -> None:
    write_video_shards(tmp_path / "videos", num_shards=2, per_shard=6)
    write_shard(tmp_path / "videos" / "val-000000.tar", [clip_sample(f"v{i}", 1000 + i) for i in range(5)])
    dm = ShardDataModule(
        train_shards=str(tmp_path / "videos" / "train-*.tar"),
        val_shards=str(tmp_path / "videos" / "val-*.tar"),
        kind="video", batch_size=4, num_frames=8, size=16, shuffle_buffer=8, val_samples=3,
    )
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(5)]  # 20 samples > 12 in the shards: it repeats
    assert batches[0]["video"].shape == (4, 8, 3, 16, 16)
    assert len(batches[0]["txt"]) == 4 and isinstance(batches[0]["txt"][0], str)
    assert batches[0]["fps_id"].tolist() == [7] * 4 and batches[0]["motion_bucket_id"].dtype == torch.int64
    val = [k for b in dm.val_dataloader() for k in b["__key__"]]
    assert val == ["v0", "v1", "v2"] == [k for b in dm.val_dataloader() for k in b["__key__"]]
    assert dm.num_skipped == 0


def test_datamodule_images_without_val_and_missing_data(tmp_path: Path) -> None:
    write_image_shard(tmp_path / "images" / "train-000000.tar", 4)
    dm = ShardDataModule(train_shards=str(tmp_path / "images"), kind="image", batch_size=2, size=16)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(3)]  # 6 samples: more than one pass over the 4 good ones
    assert batches[0]["jpg"].shape == (2, 3, 16, 16) and len(batches[0]["txt"]) == 2
    assert dm.val_dataloader() == [] and dm.num_skipped >= 1
    missing = ShardDataModule(train_shards=str(tmp_path / "nothing"), kind="video", batch_size=2)
    with pytest.raises(FileNotFoundError, match="vldm.jobs.toy_data"):
        missing.setup("fit")


def test_hydra_configs_instantiate(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.helpers.configs import compose

    write_video_shards(tmp_path / "videos", num_shards=1, per_shard=6)
    write_shard(tmp_path / "videos" / "val-000000.tar", [clip_sample("v0", 7)])
    write_image_shard(tmp_path / "images" / "train-000000.tar", 1)
    write_image_shard(tmp_path / "images" / "val-000000.tar", 1)
    modules = {}
    for name in ("toy_images", "toy_videos", "toy_hq", "webdataset"):
        overrides = [f"+data={name}", f"+paths.data_dir={tmp_path}"]
        if name == "webdataset":
            overrides.append(f"data.train_shards={tmp_path}/videos")
        modules[name] = dm = instantiate(compose(None, overrides).data)
        assert isinstance(dm, ShardDataModule)
        dm.setup("fit")
    assert modules["toy_images"].kind == "image" and modules["toy_images"].val_dataset is not None
    assert modules["toy_videos"].val_dataset is not None and modules["toy_videos"].filter is None
    hq = modules["toy_hq"]
    assert hq.kind == "video" and hq.filter == {"kind": "clean"} and hq.batch_size == 8
    it = iter(hq.train_dataset)
    keys = [next(it)["__key__"] for _ in range(9)]  # 3 passes over the 3 clean clips
    assert sorted(set(keys)) == ["s0_0", "s0_2", "s0_4"]


def test_truncated_shard_does_not_stop_iteration(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.tar", [clip_sample(f"a{i}", i) for i in range(3)])
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: len(data) * 2 // 3])  # cut inside the third sample
    write_shard(tmp_path / "b.tar", [clip_sample("b0", 9)])
    ds = VideoClipDataset([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], 8, 32, repeat=False, shuffle_shards=False)
    keys = keys_of(ds)
    assert keys[-1] == "b0" and set(keys) >= {"a0", "b0"} and "a2" not in keys
    assert ds.num_skipped >= 1


def test_in_order_reads_every_sample_once_in_file_order_on_any_rank(tmp_path: Path, monkeypatch) -> None:
    write_shard(tmp_path / "a.tar", [clip_sample(f"a{i}", i) for i in range(3)])
    write_shard(tmp_path / "b.tar", [clip_sample("b0", 9)])
    ds = VideoClipDataset([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], 8, 32, shuffle_buffer=8)
    import vldm.data.shards as shards

    monkeypatch.setattr(shards, "_rank_world", lambda: (1, 2))  # as rank 1 of 2: split streams would differ
    out = list(ds.in_order())
    assert [o["__key__"] for o in out] == ["a0", "a1", "a2", "b0"]
    assert all("caption" in o["__meta__"] for o in out) and out[0]["video"].shape == (8, 3, 32, 32)
