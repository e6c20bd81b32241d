"""Streaming video/image datasets over webdataset-style tar shards.

A sample is the group of consecutive tar members sharing a key (``dir/key.ext``, key = the file
name up to its first dot), e.g. ``000012.mp4`` + ``000012.json``. Undecodable samples are
skipped, counted and logged, and never stop the iteration.

Distributed reading. A *reader* is one DataLoader worker of one DDP rank; ``rank * workers + id``
of ``ranks * workers`` readers (:func:`_rank_world`). Pass ``p`` (an epoch of the endless stream)
permutes the shard list with ``[seed, p]`` (the same on every reader) and gives reader ``r``
the shards ``r, r + world, ...`` of it: within a pass no sample reaches two readers, and the
assignment changes from pass to pass. With fewer shards than readers (or a ``max_samples`` cap)
every reader reads every shard and keeps the samples whose index is ``r`` modulo ``world``
instead. Readers run their passes independently (shards differ in size), so "no duplicates"
holds per pass index, not per wall-clock interval.

Position. Every yielded sample carries ``__pos__`` = ``[reader, world, pass, position, floor]``:
its index among the raw (undecoded) samples leaving the shuffle buffer in that pass, and
``floor``, the first shard of the reader's pass list not yet entirely yielded. The
:class:`~vldm.training.data_state.DataPosition` callback keeps the last trained one per reader in
the checkpoint; :meth:`ShardDataset.restore_position` continues after it: ``"shard"`` mode skips
the finished shards without reading them and refills the shuffle buffer from ``floor`` on (no
sample is lost; samples of unfinished shards already trained come again), ``"exact"`` mode
replays the pass's raw samples through the same shuffle without decoding them and continues
with exactly the sample an uninterrupted run would have given (reads the pass's tar bytes up to
that point once).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Sequence
from multiprocessing.context import get_spawning_popen
from multiprocessing.sharedctypes import RawArray
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vldm.data.frames import FrameWindow, frame_size, resize_center_crop
from vldm.video.pixels import frames_to_tensor
from vldm.io.tar_shards import iter_tar_samples, resolve_shards
from vldm.io.video_io import VideoDecodeError, read_video
from vldm.utils.distributed import process_group_rank_world

logger = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mov", "mkv", "avi")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_SKIP_SLOTS = 256  # >= DataLoader workers per process
POSITION_KEY = "__pos__"  # int64 [reader, world, pass, position, floor] per sample (see the module doc)
RESUME_MODES = ("shard", "exact")


def _rank_world() -> tuple[int, int]:
    """Global (rank, world) over DDP processes x DataLoader workers."""
    rank, world = process_group_rank_world()
    info = get_worker_info()
    if info is None:
        return rank, world
    return rank * info.num_workers + info.id, world * info.num_workers


def caption_text(meta: dict[str, Any]) -> str:
    """The caption a sample trains on: its json ``caption``, or ``""`` (the unconditional text) when
    absent or null."""
    caption = meta.get("caption")
    return "" if caption is None else str(caption)


def check_filter(spec: Any, name: str = "filter") -> dict[str, Any] | None:
    """``spec`` as a plain dict (None when empty), or ``ValueError`` naming the expected form."""
    if spec is None:
        return None
    if isinstance(spec, str):
        raise ValueError(f"data.{name} must be a mapping of json fields, e.g. {{motion_score: {{min: 0.002}}}}, "
                         f"got the string {spec!r}; on the command line quote it once for the shell only: "
                         f"data.{name}='{{motion_score: {{min: 0.002}}}}'")
    if not hasattr(spec, "items"):
        raise ValueError(f"data.{name} must be a mapping of json fields, got {type(spec).__name__} {spec!r}")
    return dict(spec) or None


def merge_filters(base: Any, extra: Any) -> dict[str, Any] | None:
    """One filter from ``base`` (a data config's own) and ``extra`` (the user's): every condition
    of both applies; a field in both takes ``extra``'s condition."""
    merged = {**(check_filter(base, "base_filter") or {}), **(check_filter(extra) or {})}
    return merged or None


def filter_misses(meta: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The fields of ``spec`` that ``meta`` lacks (why a sample without scores never matches)."""
    return [key for key in spec if key not in meta]


def _matches(meta: dict[str, Any], spec: dict[str, Any]) -> bool:
    for key, want in spec.items():
        if key not in meta:
            return False
        value = meta[key]
        if isinstance(want, dict) and ({"min", "max"} & set(want)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return False
            if "min" in want and want["min"] is not None and value < float(want["min"]):
                return False
            if "max" in want and want["max"] is not None and value > float(want["max"]):
                return False
        elif value != want:
            return False
    return True


class SkipSample(Exception):
    """Raised by a decoder to drop one sample (counted and logged)."""


class ShardDataset(IterableDataset):
    """Base: shard splitting, epochs, filtering, shuffle buffer and skip accounting."""

    def __init__(
        self,
        shards: str | list[str],
        shuffle_buffer: int = 0,
        seed: int = 0,
        repeat: bool = True,
        filter: dict[str, Any] | None = None,  # noqa: A002 - the public name of the option
        max_samples: int | None = None,
        shuffle_shards: bool = True,
    ) -> None:
        super().__init__()
        self.shards = resolve_shards(shards)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.repeat = repeat
        self.filter = dict(filter) if filter else None
        self.max_samples = max_samples
        self.shuffle_shards = shuffle_shards
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        # Shared memory, one slot per DataLoader worker (no locking needed), so the parent
        # process sees what its workers skipped.
        self._skipped = RawArray("q", _SKIP_SLOTS)

    @property
    def num_skipped(self) -> int:
        """Samples dropped because they were undecodable or too short (plus unreadable shards)."""
        return int(sum(self._skipped))

    def __getstate__(self) -> dict[str, Any]:
        # Starting a worker process shares the counters; any other pickle/deepcopy takes a copy.
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            state["_skipped"] = list(self._skipped)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_skipped"], list):
            counts = RawArray("q", _SKIP_SLOTS)
            counts[:] = state["_skipped"]
            state["_skipped"] = counts
        self.__dict__.update(state)

    def set_epoch(self, epoch: int) -> None:
        """First epoch of the next iteration (shard order and shuffling depend on seed + epoch)."""
        self.epoch = int(epoch)

    def restore_position(self, position: dict[str, Any], mode: str = "shard") -> None:
        """Make the next iteration continue after ``position`` (``{"world": readers, "workers":
        {reader: [pass, position, floor]}}``, the last trained sample of each reader).

        ``mode``: ``"shard"`` or ``"exact"`` (see the module doc; with fewer shards than readers
        the pass is split by sample and ``"shard"`` replays as ``"exact"`` does). A reader missing
        from ``workers`` had delivered nothing and starts afresh. With another number of readers
        than saved, every reader restarts at the start of the earliest saved pass.
        """
        if mode not in RESUME_MODES:
            raise ValueError(f"resume mode must be one of {RESUME_MODES}, got {mode!r}")
        workers = {int(g): tuple(int(x) for x in v) for g, v in position.get("workers", {}).items()}
        self._resume = {"world": int(position.get("world", 0)), "workers": workers, "mode": mode}

    def _start(self, rank: int, world: int) -> tuple[int, int, int] | None:
        """``(pass, last position, floor)`` to continue after for this reader, or None."""
        saved = self._resume
        if saved is None or not saved["workers"]:
            return None
        if saved["world"] != world:
            first = min(p for p, _, _ in saved["workers"].values())
            if rank == 0:
                logger.warning("data position saved for %d readers, now %d: every reader restarts at the start "
                               "of pass %d", saved["world"], world, first)
            return first, -1, 0
        return saved["workers"].get(rank)

    def _by_shard(self, world: int) -> bool:
        """Readers split the pass by shard (enough shards, no cap), else by sample index."""
        return len(self.shards) >= world and self.max_samples is None

    def _skip(self, key: str, reason: str) -> None:
        info = get_worker_info()
        self._skipped[0 if info is None else info.id % _SKIP_SLOTS] += 1
        logger.warning("skipping sample %r: %s", key, reason)

    def decode(self, sample: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _raw(self, epoch: int, rank: int, world: int, stats: dict[str, Any],
             start_shard: int = 0) -> Iterator[dict[str, Any]]:
        """Raw samples of one pass for this reader: filtered, split, not yet decoded, each with
        ``__shard__`` (its shard's index in the reader's pass list, from ``start_shard`` on).

        Sets ``stats["by_shard"]`` and ``stats["num_shards"]`` and counts ``stats["matched"]``
        (samples passing the filter). Under a ``max_samples`` cap every reader gets the same
        number of samples (an uneven validation split would leave DDP ranks waiting for each
        other): the cap is rounded down to a multiple of ``world``, and with fewer samples than
        readers reader ``r`` takes sample ``r mod max_samples`` (one each, some shared).
        """
        shards = list(self.shards)
        if self.shuffle_shards:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        # Enough shards: each reader reads its own. Otherwise (or when the pass is capped by
        # max_samples) every reader reads all shards and keeps every world-th sample.
        by_shard = self._by_shard(world)
        if by_shard:
            shards = shards[rank::world]
        limit = self.max_samples
        if limit is not None and limit >= world:
            limit -= limit % world
        stats.update(by_shard=by_shard, matched=0, num_shards=len(shards))
        index = 0
        for shard_index, shard in enumerate(shards):
            if shard_index < start_shard:
                continue
            try:
                for sample in iter_tar_samples(shard):
                    meta = self._meta(sample)
                    if isinstance(meta, str):  # unparsable json: count it in one worker only
                        if by_shard or rank == 0:
                            self._skip(sample["__key__"], meta)
                        continue
                    if self.filter and not _matches(meta, self.filter):
                        continue
                    if limit is not None and index >= limit:
                        return
                    if limit is not None and limit < world:
                        mine = index == rank % limit
                    else:
                        mine = by_shard or index % world == rank
                    index += 1
                    stats["matched"] = index
                    if mine:
                        sample["__meta__"] = meta
                        sample["__shard__"] = shard_index
                        yield sample
            except (tarfile.TarError, OSError, EOFError) as err:
                if by_shard or rank == 0:  # count a broken shard once, not once per worker
                    self._skip(f"{shard}", f"unreadable shard ({type(err).__name__}: {err}); rest of shard dropped")

    @staticmethod
    def _meta(sample: dict[str, Any]) -> dict[str, Any] | str:
        """The sample's json metadata (caption from ``txt`` if missing), or an error message."""
        raw = sample.get("json")
        if raw is None:
            meta: dict[str, Any] = {}
        else:
            try:
                meta = json.loads(raw)
                if not isinstance(meta, dict):
                    raise ValueError(f"json is a {type(meta).__name__}, not an object")
            except ValueError as err:
                return f"bad json ({err})"
        if "caption" not in meta and "txt" in sample:
            meta["caption"] = sample["txt"].decode("utf-8", errors="replace").strip()
        return meta

    def _shuffled(self, samples: Iterator[dict[str, Any]], rng: np.random.Generator,
                  num_shards: Any = None) -> Iterator[dict[str, Any]]:
        """Samples through the shuffle buffer, each with ``__floor__``: the first shard (pass list
        index) not yet entirely yielded. ``num_shards()`` gives the floor once all are."""
        if self.shuffle_buffer <= 1:
            for sample in samples:
                sample["__floor__"] = sample.get("__shard__", 0)  # its shard may have more samples
                yield sample
            return
        buffer: list[dict[str, Any]] = []
        held: dict[int, int] = {}  # shard index -> samples of it in the buffer

        def move(sample: dict[str, Any], change: int) -> None:
            shard = sample.get("__shard__", 0)
            held[shard] = held.get(shard, 0) + change
            if not held[shard]:
                del held[shard]

        for sample in samples:
            move(sample, 1)
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], sample = sample, buffer[i]
            move(sample, -1)
            sample["__floor__"] = min(held)  # the shard being read is in the buffer too
            yield sample
        while buffer:
            sample = buffer.pop(int(rng.integers(len(buffer))))
            move(sample, -1)
            done = num_shards() if num_shards else sample.get("__shard__", 0) + 1
            sample["__floor__"] = min(held) if held else done
            yield sample

    def count_matching(self, limit: int) -> tuple[int, int, dict[str, int]]:
        """``(read, matched, missing)`` over the shards in file order, stopping at ``limit`` matches:
        samples read, samples passing the filter, and per filter field how many read samples lack it."""
        read, matched, missing = 0, 0, {key: 0 for key in (self.filter or {})}
        for shard in self.shards:
            for sample in iter_tar_samples(shard):
                meta = self._meta(sample)
                if isinstance(meta, str):
                    continue
                read += 1
                for key in filter_misses(meta, self.filter or {}):
                    missing[key] += 1
                if not self.filter or _matches(meta, self.filter):
                    matched += 1
                    if matched >= limit:
                        return read, matched, missing
        return read, matched, missing

    def in_order(self) -> Iterator[dict[str, Any]]:
        """Every decodable sample once, in file order, whatever the rank or worker (no split, no
        shuffle, no repeat), with its json under ``__meta__``: for reference sets every rank needs
        whole, such as evaluation's reference clips. Undecodable samples are skipped and counted."""
        for sample in self._raw(0, 0, 1, {}):
            meta = sample.pop("__meta__")
            try:
                out = self.decode(sample, meta)
            except SkipSample as err:
                self._skip(sample["__key__"], str(err))
                continue
            out["__key__"], out["__meta__"] = sample["__key__"], meta
            yield out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = _rank_world()
        start = self._start(rank, world)
        exact = self._resume is not None and self._resume["mode"] == "exact"
        epoch = self.epoch if start is None else start[0]
        while True:
            stats: dict[str, Any] = {}
            produced, skip_to, first_shard, offset, tail = 0, -1, 0, 0, ()
            resumed = start is not None and epoch == start[0]
            if resumed:
                _, last, floor = start
                if exact or not self._by_shard(world) or last < 0:
                    skip_to = last  # replay the pass up to the last trained sample, decoding nothing
                else:  # skip whole finished shards unread; a fresh shuffle of the rest
                    first_shard, offset, tail = floor, last + 1, (floor,)
            rng = np.random.default_rng([self.seed, epoch, rank, *tail])
            raw = self._raw(epoch, rank, world, stats, start_shard=first_shard)
            stream = self._shuffled(raw, rng, lambda: stats["num_shards"])
            for position, sample in enumerate(stream, start=offset):
                if position <= skip_to:
                    continue
                floor = sample.pop("__floor__")
                sample.pop("__shard__", None)
                sample["__epoch__"] = epoch  # for per-epoch random choices in decode (frame windows)
                try:
                    out = self.decode(sample, sample.pop("__meta__"))
                except SkipSample as err:
                    self._skip(sample["__key__"], str(err))
                    continue
                out["__key__"] = sample["__key__"]
                out[POSITION_KEY] = torch.tensor([rank, world, epoch, position, floor], dtype=torch.long)
                produced += 1
                yield out
            if not self.repeat:
                return
            if produced == 0 and not resumed:  # repeating would spin forever without yielding
                if not stats["by_shard"] and 0 < stats["matched"] <= rank:
                    return  # fewer samples than workers: this one simply has none
                raise RuntimeError(
                    f"a full pass over {len(self.shards)} shard(s) gave this worker no usable samples "
                    f"({stats['matched']} matched filter={self.filter}, {self.num_skipped} skipped; see the "
                    "warnings above)"
                )
            epoch += 1


class VideoClipDataset(ShardDataset):
    """Yields ``video`` float32 ``(T, 3, H, W)`` in [-1, 1], ``txt``, ``fps_id``, ``motion_bucket_id``
    and ``__key__`` from ``mp4`` + ``json`` samples. The ``T = num_frames`` frames are taken every
    ``frame_stride`` source frames (an int, or a list to draw from per clip) from the first frame
    or, with ``clip_start="random"``, a random one (:class:`vldm.data.frames.FrameWindow`); ``fps_id``
    is the rate of the frames taken. ``size``: an int (square) or ``[height, width]``. Clips too
    short for every stride, and undecodable ones, are skipped and counted."""

    def __init__(
        self,
        shards: str | list[str],
        num_frames: int,
        size: int | Sequence[int],
        shuffle_buffer: int = 0,
        seed: int = 0,
        repeat: bool = True,
        filter: dict[str, Any] | None = None,  # noqa: A002
        max_samples: int | None = None,
        shuffle_shards: bool = True,
        default_motion_bucket_id: int = 127,
        frame_stride: int | Sequence[int] = 1,
        clip_start: str = "first",
    ) -> None:
        super().__init__(shards, shuffle_buffer, seed, repeat, filter, max_samples, shuffle_shards)
        self.window = FrameWindow.of(num_frames, frame_stride, clip_start)
        self.num_frames = self.window.num_frames
        self.size = frame_size(size)
        self.default_motion_bucket_id = default_motion_bucket_id

    def motion_bucket(self, meta: dict[str, Any]) -> int:
        """The json's ``motion_bucket_id`` (data_curation writes one per clip), else the default."""
        value = meta.get("motion_bucket_id")
        return self.default_motion_bucket_id if value is None else int(value)

    def decode(self, sample: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        ext = next((e for e in VIDEO_EXTS if e in sample), None)
        if ext is None:
            raise SkipSample(f"no video member (has {sorted(k for k in sample if not k.startswith('__'))})")
        try:
            frames, fps = read_video(sample[ext], max_frames=self.window.frames_to_read)
        except VideoDecodeError as err:
            raise SkipSample(str(err)) from None
        chosen = self.window.choose(len(frames), self.seed, sample.get("__epoch__", 0), sample.get("__key__", ""))
        if chosen is None:
            raise SkipSample(f"only {len(frames)} frames, need {self.window.shortest()} "
                             f"({self.num_frames} at stride {min(self.window.strides)})")
        start, stride = chosen
        frames = frames[start : start + self.window.span(stride) : stride]
        fps = float(meta.get("fps", fps))
        return {
            "video": frames_to_tensor(resize_center_crop(frames, self.size)),
            "txt": caption_text(meta),
            "fps_id": max(int(round(fps / stride)) - 1, 0),
            "motion_bucket_id": self.motion_bucket(meta),
        }


class ImageDataset(ShardDataset):
    """Yields ``jpg`` float32 ``(3, H, W)`` in [-1, 1], ``txt`` and ``__key__`` from ``png``/``jpg`` +
    ``json`` samples; ``size`` an int (square) or ``[height, width]``."""

    def __init__(
        self,
        shards: str | list[str],
        size: int | Sequence[int],
        shuffle_buffer: int = 0,
        seed: int = 0,
        repeat: bool = True,
        filter: dict[str, Any] | None = None,  # noqa: A002
        max_samples: int | None = None,
        shuffle_shards: bool = True,
    ) -> None:
        super().__init__(shards, shuffle_buffer, seed, repeat, filter, max_samples, shuffle_shards)
        self.size = frame_size(size)

    def decode(self, sample: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise SkipSample(f"no image member (has {sorted(k for k in sample if not k.startswith('__'))})")
        image = cv2.imdecode(np.frombuffer(sample[ext], np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SkipSample(f"cannot decode {ext} ({len(sample[ext])} bytes, starting {sample[ext][:16]!r})")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return {"jpg": frames_to_tensor(resize_center_crop(image, self.size)), "txt": caption_text(meta)}
