"""Synthetic toy clips: determinism, motion, static/text/cut variants and the shard writer."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vldm.data.toy import BACKGROUNDS, COLOURS, ToyVideoConfig, generate_clip
from vldm.jobs.toy_data import main, write_toy_dataset


def weighted_centroid(frame: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of pixels weighted by their difference from the (median) background."""
    background = np.median(frame.reshape(-1, 3), axis=0)
    weight = np.abs(frame.astype(np.float64) - background).sum(-1)
    y, x = np.mgrid[: frame.shape[0], : frame.shape[1]]
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: int = 10) -> float:
    return float((np.abs(a.astype(int) - b.astype(int)).max(-1) > threshold).mean())


def test_deterministic_per_seed() -> None:
    a, meta_a = generate_clip(3, "clean")
    b, meta_b = generate_clip(3, "clean")
    c, _ = generate_clip(4, "clean")
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and meta_a == meta_b
    assert not np.array_equal(a, c)
    json.dumps(meta_a)  # JSON-serialisable


def test_meta_fields_and_colour_direction() -> None:
    for seed in range(20):
        _, meta = generate_clip(seed, "clean")
        assert meta["direction"] == pytest.approx(list(COLOURS[meta["colour"]][1]), abs=1e-6)
        assert meta["colour"] in meta["caption"] and meta["shape"] in meta["caption"]
        assert meta["background"] in meta["caption"] and "moves" in meta["caption"]
        assert 1.0 <= meta["speed"] <= 3.0 and 0 < meta["motion_bucket_id"] <= 200
        assert meta["motion_bucket_id"] == round(meta["speed"] / 3.0 * 200)
        assert meta["kind"] == "clean" and not meta["static"] and not meta["has_text"] and meta["cut_frame"] is None
        assert (meta["fps"], meta["num_frames"], meta["seed"]) == (8, 8, seed)


@pytest.mark.parametrize("cfg", [ToyVideoConfig(), ToyVideoConfig(size=48, num_frames=12)])
def test_clean_motion_matches_speed_and_direction(cfg: ToyVideoConfig) -> None:
    for seed in range(30):
        frames, meta = generate_clip(seed, "clean", cfg)
        centroids = np.stack([weighted_centroid(f) for f in frames])
        expected = meta["speed"] * np.array(meta["direction"])
        assert np.abs(np.diff(centroids, axis=0) - expected).max() < 0.5, meta
        # the shape stays fully inside: the border ring is pure background in every frame
        ring = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
        assert np.array_equal(ring, np.broadcast_to(BACKGROUNDS[meta["background"]], ring.shape))


def test_static_clip_is_first_clean_frame_repeated() -> None:
    for seed in range(5):
        frames, meta = generate_clip(seed, "static")
        clean, _ = generate_clip(seed, "clean")
        assert (frames == frames[0]).all() and np.array_equal(frames[0], clean[0])
        assert meta["static"] and meta["speed"] == 0 and meta["motion_bucket_id"] == 0
        assert "stays still" in meta["caption"]


def test_text_clip_burns_in_static_text() -> None:
    for seed in range(20):
        frames, meta = generate_clip(seed, "text")
        clean, _ = generate_clip(seed, "clean")
        assert meta["has_text"] and meta["text"]
        for t in range(len(frames)):
            assert changed_fraction(frames[t], clean[t]) >= 0.10
        # the text does not move: wherever the clean clip is unchanged, so is the text clip
        unchanged = (clean == clean[0]).all(axis=(0, 3))
        assert (frames[:, unchanged] == frames[0, unchanged]).all()


def test_cut_clip_changes_scene_exactly_at_cut_frame() -> None:
    cut_frames = set()
    for seed in range(20):
        frames, meta = generate_clip(seed, "cut")
        cut = meta["cut_frame"]
        cut_frames.add(cut)
        assert 2 <= cut <= 6
        clean, _ = generate_clip(seed, "clean")
        assert np.array_equal(frames[:cut], clean[:cut])
        changes = [changed_fraction(frames[t - 1], frames[t]) for t in range(1, len(frames))]
        assert changes[cut - 1] > 0.8
        assert max(changes[: cut - 1] + changes[cut:]) < 0.25
    assert len(cut_frames) > 1


def test_invalid_kind_and_config() -> None:
    with pytest.raises(ValueError, match="kind"):
        generate_clip(0, "blurry")
    with pytest.raises(ValueError, match="even"):
        ToyVideoConfig(size=33)


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_write_toy_dataset_counts_and_idempotence(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    manifest = write_toy_dataset(root, num_train=40, num_val=6, reject_fraction=0.1, samples_per_shard=16)
    assert manifest["counts"]["videos/train"] == {"clean": 28, "static": 4, "text": 4, "cut": 4}
    assert manifest["counts"]["videos/val"] == {"clean": 6}
    assert manifest["counts"]["images/train"] == {"clean": 28 * 4, "static": 4}
    assert json.loads((root / "manifest.json").read_text())["counts"] == manifest["counts"]
    train = sorted((root / "videos").glob("train-*.tar"))
    assert [p.name for p in train] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [p.name for p in (root / "videos").glob("val-*.tar")] == ["val-000000.tar"]
    assert not list(root.rglob("*.tmp")) and not list(root.glob(".tmp*"))

    samples = {k: v for p in train for k, v in read_shard(p).items()}
    assert len(samples) == 40 and all(set(s) == {"mp4", "json"} for s in samples.values())
    metas = [json.loads(s["json"]) for s in samples.values()]
    assert sorted(m["kind"] for m in metas).count("text") == 4
    val_metas = [json.loads(s["json"]) for s in read_shard(root / "videos" / "val-000000.tar").values()]
    assert not {m["seed"] for m in metas} & {m["seed"] for m in val_metas}
    assert manifest["counts"]["images/val"] == {"clean": 6}
    assert sorted(p.name for p in (root / "first_frames").glob("*.png")) == [f"val_{i:06d}.png" for i in range(6)]
    images = {k: v for p in sorted((root / "images").glob("train-*.tar")) for k, v in read_shard(p).items()}
    assert len(images) == 116 and all(v["png"][:4] == b"\x89PNG" for v in images.values())

    # a clip in the shard decodes to exactly what the generator makes (up to compression)
    from vldm.io.video_io import read_video

    meta = metas[0]
    frames, fps = read_video(next(iter(samples.values()))["mp4"])
    reference, _ = generate_clip(meta["seed"], meta["kind"])
    assert frames.shape == reference.shape and fps == 8.0
    assert np.abs(frames.astype(int) - reference.astype(int)).mean() < 3

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = write_toy_dataset(root, num_train=40, num_val=6, reject_fraction=0.1, samples_per_shard=16)
    assert again["counts"] == manifest["counts"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes

    # a different request rewrites, and removes shards that are no longer part of the dataset
    smaller = write_toy_dataset(root, num_train=10, num_val=2, samples_per_shard=16)
    assert smaller["totals"]["videos/train"] == 10
    assert [p.name for p in sorted((root / "videos").glob("train-*.tar"))] == ["train-000000.tar"]


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--root", str(tmp_path / "d"), "--num-train", "10", "--num-val", "2", "--size", "16", "--frames", "6"])
    out = capsys.readouterr().out
    assert "videos/train: 10 samples" in out and "videos/val: 2 samples" in out
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["config"]["size"] == 16 and manifest["config"]["num_frames"] == 6
    main(["--root", str(tmp_path / "d"), "--num-train", "10", "--num-val", "2", "--size", "16", "--frames", "6"])
    assert "already up to date" in capsys.readouterr().out
