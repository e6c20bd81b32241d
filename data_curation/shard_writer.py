"""Webdataset shards of the kept clips: a deterministic plan, then one task per shard.

The plan puts the kept clips of a split, sorted by ``clip_id``, ``clips_per_shard`` to a shard
(``clips-000000.tar``, ... for training, ``heldout-000000.tar``, ... for the held-out split), so the
same kept set always gives the same shards. A shard holds, per
clip, ``<clip_id>.mp4`` (re-decoded from the source at the output size, H.264) and
``<clip_id>.json`` (every score, fps, source, time span, caption) — the layout
:mod:`vldm.data.shards` reads. Tar members get fixed metadata (mtime 0, uid 0, mode 0644), so a
shard's bytes depend only on its clips and the output settings. A shard is written to
``.tar.tmp``, fsynced and renamed; a shard whose final file exists is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_curation.records import CurationError
from data_curation.work_dir import atomic_write_json, read_json
from vldm.io.tar_shards import add_tar_member

SHARD_PATTERN = "clips-{:06d}.tar"
HELDOUT_PATTERN = "heldout-{:06d}.tar"


@dataclass(frozen=True)
class OutputConfig:
    """How kept clips are written (config node ``shards``).

    ``short_side``: downscale so the short side has this many pixels (None, or a size at or above
    the source's: the source size; sides are cropped to even numbers for H.264); ``fps``: keep every ``round(source_fps / fps)``-th frame when the
    source is faster (None: the source rate); ``max_frames``: at most this many frames per clip.
    """

    short_side: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    clips_per_shard: int = 100
    crf: int = 18

    def __post_init__(self) -> None:
        if self.clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {self.clips_per_shard}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or null, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or null, got {self.max_frames}")


@dataclass(frozen=True)
class ShardClip:
    """One kept clip to write: where its frames are and the json stored beside its mp4."""

    clip_id: str
    path: str
    start: int
    end: int
    fps: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardTask:
    name: str
    path: str
    clips: tuple[ShardClip, ...]
    output: OutputConfig


@dataclass(frozen=True)
class ShardResult:
    name: str
    num_clips: int
    skipped: bool = False
    error: str | None = None


def plan_shards(kept_clip_ids: list[str], clips_per_shard: int, pattern: str = SHARD_PATTERN) -> dict[str, list[str]]:
    """``{shard name: [clip ids]}``: the sorted ids, ``clips_per_shard`` per shard, named by ``pattern``."""
    ids = sorted(kept_clip_ids)
    return {
        pattern.format(k): ids[i : i + clips_per_shard]
        for k, i in enumerate(range(0, len(ids), clips_per_shard))
    }


def content_digest(metas: list[dict[str, Any]]) -> str:
    """SHA-1 of a shard's clip json (as written), so a shard whose clips' metadata changed is rewritten."""
    text = json.dumps(metas, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def reconcile_plan(plan_path: Path, shard_dir: Path, plan: dict[str, list[str]], output: OutputConfig,
                   digests: dict[str, str] | None = None) -> list[str]:
    """Save ``plan`` and remove shard files it does not vouch for; returns the removed names.

    A shard file is kept only when the previous plan had the same clips under the same name, the
    same ``digests`` entry (:func:`content_digest` of the clips' json) and the output settings are
    unchanged; otherwise (filters, scores or settings changed) it is removed and will be rewritten.
    The new plan is saved before any shard is written.
    """
    stored = {"output": asdict(output), "shards": plan, "digests": digests or {}}
    old: dict[str, Any] = {}
    if plan_path.exists():
        try:
            old = read_json(plan_path)
        except (OSError, ValueError):
            old = {}
    same_output = old.get("output") == stored["output"]
    old_shards = old.get("shards", {}) if same_output else {}
    old_digests = old.get("digests", {})
    removed = []
    for path in sorted(shard_dir.glob("*.tar")):
        if (path.name not in plan or old_shards.get(path.name) != plan[path.name]
                or old_digests.get(path.name) != stored["digests"].get(path.name)):
            path.unlink()
            removed.append(path.name)
    if old != stored:
        atomic_write_json(plan_path, stored)
    return removed


def _resize_even(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    """Downscale to ``short_side`` (never up) and crop to even height and width (H.264 yuv420p)."""
    import cv2

    t, h, w, _ = frames.shape
    if short_side is not None and min(h, w) > short_side:
        scale = short_side / min(h, w)
        nh, nw = max(2, int(round(h * scale))), max(2, int(round(w * scale)))
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in frames])
        h, w = nh, nw
    return np.ascontiguousarray(frames[:, : h - h % 2, : w - w % 2])


def render_clip(clip: ShardClip, output: OutputConfig) -> tuple[bytes, dict[str, Any]]:
    """Decode one clip at the output size, resample and encode it, a batch of frames at a time;
    returns mp4 bytes and its json."""
    from data_curation.decode import iter_span
    from vldm.io.video_io import encode_mp4_chunks

    stride = 1
    if output.fps is not None and output.fps < clip.fps:
        stride = max(1, int(round(clip.fps / output.fps)))
    limit = output.max_frames
    shape: list[int] = []

    def chunks() -> Iterator[np.ndarray]:
        index = kept = 0  # source frames seen / frames written
        for batch in iter_span(clip.path, clip.start, clip.end, output.short_side):
            take = [i for i in range(len(batch)) if (index + i) % stride == 0]
            index += len(batch)
            if limit is not None:
                take = take[: max(0, limit - kept)]
            if take:
                frames = _resize_even(np.asarray(batch)[take], output.short_side)
                kept += len(frames)
                shape[:] = [kept, frames.shape[1], frames.shape[2]]
                yield frames
            if limit is not None and kept >= limit:
                return

    fps = clip.fps / stride
    mp4 = encode_mp4_chunks(chunks(), fps, crf=output.crf)
    meta = dict(clip.meta)
    meta.update(fps=fps, source_fps=clip.fps, frame_stride=stride, num_frames=int(shape[0]),
                height=int(shape[1]), width=int(shape[2]))
    return mp4, meta


def write_shard(task: ShardTask) -> ShardResult:
    """Write one shard (engine task): skip when done, else ``.tar.tmp`` + fsync + rename.

    A clip that fails to decode again (the file changed since scoring) fails the shard: the result
    carries the error and no shard file is left, so the next run retries it.
    """
    final = Path(task.path)
    if final.exists():
        return ShardResult(task.name, len(task.clips), skipped=True)
    tmp = final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for clip in task.clips:
                    mp4, meta = render_clip(clip, task.output)
                    add_tar_member(tar, f"{clip.clip_id}.mp4", mp4)
                    add_tar_member(tar, f"{clip.clip_id}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except (CurationError, OSError, ValueError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        return ShardResult(task.name, len(task.clips), error=f"{type(err).__name__}: {err}")
    return ShardResult(task.name, len(task.clips))
