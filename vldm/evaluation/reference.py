"""Reference clips from shards, and their feature statistics cached per dataset and protocol.

The reference set is the first ``num_videos`` decodable clips of the shards in file order (no
shuffling, the same on every rank), each its first ``num_frames`` frames resized and centre-cropped
to ``size`` (:class:`vldm.data.shards.VideoClipDataset`). Their first frames condition
image-to-video generation; their captions condition text metrics.

Statistics are cached at ``<cache_dir>/<dataset fingerprint>-<protocol key>.npz``; the fingerprint
hashes the shard paths, sizes and modification times and the clip count, so editing the data or
changing the protocol (frames, resolution, count, feature network) makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vldm.data.frames import size_record
from vldm.data.shards import VideoClipDataset


@dataclass
class ReferenceClips:
    """``videos`` uint8 ``(n, t, h, w, 3)``; per clip: caption, fps, motion bucket, key."""

    videos: np.ndarray
    captions: list[str]
    fps: list[float]
    motion_bucket_ids: list[int]
    keys: list[str]
    shards: list[str]
    fingerprint: str
    skipped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.videos.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.videos.shape[1])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.videos.shape[2]), int(self.videos.shape[3])

    @property
    def resolution(self) -> int | list[int]:
        """As recorded in protocols: an int when square, else ``[height, width]``."""
        return size_record(self.hw)

    @property
    def first_frames(self) -> np.ndarray:
        """uint8 ``(n, h, w, 3)``: the conditioning images."""
        return self.videos[:, 0]

    @property
    def mean_fps(self) -> float:
        return float(np.mean(self.fps)) if self.fps else float("nan")


def dataset_fingerprint(shards: list[str], num_videos: int) -> str:
    """Short hash of the shard paths, sizes and mtimes, and the clip count."""
    items = []
    for shard in shards:
        st = os.stat(shard)
        items.append([os.path.abspath(shard), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"shards": items, "num_videos": int(num_videos)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_reference_clips(shards: str | list[str], num_videos: int, num_frames: int,
                         size: int | tuple[int, int]) -> ReferenceClips:
    """The first ``num_videos`` decodable clips (see the module doc). Fewer available: all of them."""
    from vldm.video.pixels import tensor_to_frames

    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}")
    dataset = VideoClipDataset(shards, num_frames=num_frames, size=size, repeat=False, shuffle_shards=False)
    clips = []
    for clip in dataset.in_order():
        clips.append(clip)
        if len(clips) == num_videos:
            break
    if not clips:
        raise FileNotFoundError(f"no decodable clip of at least {num_frames} frames in {shards} "
                                f"({dataset.num_skipped} skipped)")
    import torch

    videos = tensor_to_frames(torch.stack([c["video"] for c in clips]))
    return ReferenceClips(
        videos=videos, captions=[c["txt"] for c in clips], fps=[float(c["__meta__"].get("fps", c["fps_id"] + 1)) for c in clips],
        motion_bucket_ids=[int(c["motion_bucket_id"]) for c in clips], keys=[c["__key__"] for c in clips],
        shards=list(dataset.shards), fingerprint=dataset_fingerprint(dataset.shards, num_videos),
        skipped=dataset.num_skipped)


def net_inputs(net: Any, videos: np.ndarray) -> np.ndarray:
    """What ``net.features`` takes: the videos (video network) or all their frames (image network)."""
    if getattr(net, "num_frames", None) is None:
        return videos.reshape(-1, *videos.shape[2:])
    return videos


def feature_stats(net: Any, videos: np.ndarray, chunk: int = 64):
    """:class:`~vldm.evaluation.frechet.FeatureStats` of ``net``'s features of uint8 ``videos``
    ``(n, t, h, w, 3)`` (frames of all videos for an image network)."""
    from vldm.evaluation.frechet import FeatureStats

    stats = FeatureStats.empty(net.dim)
    for start in range(0, len(videos), chunk):
        part = videos[start:start + chunk]
        if len(part):
            stats.update(np.asarray(net.features(net_inputs(net, part)), dtype=np.float64))
    return stats


def cache_path(cache_dir: str | Path, clips: ReferenceClips, protocol: Any) -> Path:
    return Path(cache_dir).expanduser() / f"{clips.fingerprint}-{protocol.key()}.npz"


def reference_stats(net: Any, clips: ReferenceClips, protocol: Any, cache_dir: str | Path | None,
                    say: Callable[[str], None] = print, rank: int = 0, world: int = 1):
    """Feature statistics of the reference clips under ``protocol``, from the cache when present.

    Computed: each rank takes its share of the clips, the sums are all-reduced, rank 0 writes the
    cache (atomically: :meth:`FeatureStats.to_npz`). ``cache_dir=None``: no cache.
    """
    from vldm.evaluation.frechet import FeatureStats
    from vldm.evaluation.ranks import all_reduce_stats, shard_indices

    path = cache_path(cache_dir, clips, protocol) if cache_dir is not None else None
    if path is not None and path.is_file():
        stats, meta = FeatureStats.from_npz(path)
        if meta.get("protocol_key", protocol.key()) == protocol.key():
            say(f"[vldm] eval: reference stats: cached {path}")
            return stats
        say(f"[vldm] eval: {path} was written for another protocol; recomputing")
    mine = shard_indices(len(clips), rank, world)
    local = feature_stats(net, clips.videos[mine[0]:mine[-1] + 1]) if mine else FeatureStats.empty(net.dim)
    stats = all_reduce_stats(local)
    if path is not None and rank == 0:
        stats.to_npz(path, {"protocol": protocol.as_dict(), "protocol_key": protocol.key(),  # atomic write
                            "fingerprint": clips.fingerprint, "shards": clips.shards, "keys": clips.keys})
        say(f"[vldm] eval: reference stats: computed and cached {path}")
    return stats
