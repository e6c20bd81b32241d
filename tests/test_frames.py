"""Training frame geometry (H x W, cover + centre crop) and temporal windows (stride, random start, fps_id)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.shards import FPS, counting_shard
from vldm.training.datamodule import ShardDataModule
from vldm.data.frames import FrameWindow, frame_size, resize_center_crop, size_record
from vldm.data.shards import VideoClipDataset


def test_frame_size_and_record() -> None:
    assert frame_size(32) == (32, 32) and frame_size([576, 1024]) == (576, 1024)
    assert size_record(32) == 32 and size_record((32, 32)) == 32 and size_record([576, 1024]) == [576, 1024]
    for bad in (0, [32], [32, 0], [1, 2, 3]):
        with pytest.raises(ValueError, match="frame size"):
            frame_size(bad)


def test_resize_covers_and_crops_the_centre() -> None:
    """A 60x100 frame whose pixel value is its column: a 30x30 crop keeps source columns 20..79."""
    cols = np.broadcast_to(np.arange(100, dtype=np.uint8)[None, :, None], (60, 100, 3))
    frames = np.stack([cols, cols])
    out = resize_center_crop(frames, 30)
    assert out.shape == (2, 30, 30, 3)
    assert abs(out[0, :, 0, 0].mean() - 20.5) <= 1.0 and abs(out[0, :, -1, 0].mean() - 78.5) <= 1.0
    wide = resize_center_crop(frames, (30, 100))  # wider than the source aspect: scale to width, crop rows
    assert wide.shape == (2, 30, 100, 3) and np.abs(wide[0, 0, :, 0].astype(int) - np.arange(100)).max() <= 1
    tall = resize_center_crop(frames, [60, 20])
    assert tall.shape == (2, 60, 20, 3) and abs(tall[0, :, :, 0].mean() - 49.5) <= 1.0


def test_window_choices() -> None:
    first = FrameWindow.of(4, 3)
    assert first.span(3) == 10 and first.frames_to_read == 10
    assert first.choose(10, 0, 0, "k") == (0, 3) and first.choose(9, 0, 0, "k") is None
    several = FrameWindow.of(4, [1, 2, 4], "random")
    assert several.frames_to_read is None and several.shortest() == 4
    assert several.choose(7, 0, 0, "k")[1] in (1, 2)  # span at stride 4 is 13 > 7
    picks = [several.choose(20, 0, epoch, f"k{i}") for epoch in range(3) for i in range(100)]
    assert picks == [several.choose(20, 0, epoch, f"k{i}") for epoch in range(3) for i in range(100)]  # reproducible
    assert set(Counter(s for _, s in picks)) == {1, 2, 4}
    assert all(0 <= start <= 20 - several.span(s) for start, s in picks)
    assert len({start for start, s in picks if s == 1}) == 17  # every start 0..16 occurs
    changed = sum(several.choose(20, 0, 0, f"k{i}") != several.choose(20, 0, 1, f"k{i}") for i in range(100))
    assert changed > 80  # another epoch, (mostly) another window
    with pytest.raises(ValueError, match="clip_start"):
        FrameWindow.of(4, 1, "middle")
    with pytest.raises(ValueError, match="strides"):
        FrameWindow.of(4, [0])


def source_indices(video: torch.Tensor) -> list[int]:
    grey = (video.mean(dim=(1, 2, 3)) + 1.0) * 127.5
    return [round(float(g) / 8) for g in grey]


def test_video_dataset_strides_and_sets_fps_id(tmp_path: Path) -> None:
    shard = counting_shard(tmp_path / "train-000000.tar", {"long": 30, "short": 6})
    ds = VideoClipDataset(str(shard), num_frames=4, size=(16, 24), repeat=False, shuffle_shards=False,
                          frame_stride=3)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == ["long"] and ds.num_skipped == 1  # 'short' cannot span 10 frames
    video = samples[0]["video"]
    assert video.shape == (4, 3, 16, 24)
    assert source_indices(video) == [0, 3, 6, 9]
    assert samples[0]["fps_id"] == round(FPS / 3) - 1  # the frames seen play at 8 fps


def test_video_dataset_random_windows_are_reproducible(tmp_path: Path) -> None:
    shard = counting_shard(tmp_path / "train-000000.tar", {f"c{i}": 30 for i in range(6)})

    def windows(seed: int) -> list[list[int]]:
        ds = VideoClipDataset(str(shard), num_frames=4, size=16, repeat=False, shuffle_shards=False,
                              frame_stride=[1, 2], clip_start="random", seed=seed)
        return [source_indices(s["video"]) for s in ds]

    first = windows(0)
    assert first == windows(0)
    for idx in first:
        step = idx[1] - idx[0]
        assert step in (1, 2) and idx == [idx[0] + step * j for j in range(4)]
    assert len({tuple(i) for i in first}) > 1 and first != windows(1)


def test_datamodule_checks_window_options_up_front() -> None:
    with pytest.raises(ValueError, match="clip_start"):
        ShardDataModule("x.tar", clip_start="middle")
    with pytest.raises(ValueError, match="frame size"):
        ShardDataModule("x.tar", size=[576])
    assert ShardDataModule("x.tar", size=[576, 1024]).size == (576, 1024)
