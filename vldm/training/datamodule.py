"""Lightning data modules over webdataset shards: video clips or still images, and their cached latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from vldm.data.frames import FrameWindow, frame_size
from vldm.data.latent_dataset import LatentClipDataset, read_manifest
from vldm.data.shards import RESUME_MODES, ImageDataset, ShardDataset, VideoClipDataset, merge_filters
from vldm.io.tar_shards import MAKE_TOY_HINT, resolve_shards

ShardSpec = str | list[str]


class ShardDataModule(pl.LightningDataModule):
    """Infinite shuffled training stream plus a small fixed validation set from tar shards.

    ``kind="video"`` yields ``video``/``txt``/``fps_id``/``motion_bucket_id`` batches,
    ``kind="image"`` yields ``jpg``/``txt`` batches (see :mod:`vldm.data.shards`).

    Under DDP every rank builds its own loader over the same shards; the dataset splits them
    over ranks x workers (disjoint within a pass, a new split every pass). The training stream
    never ends (``repeat=True``), so every rank always has a next batch and ``max_steps`` ends
    training on all ranks at the same step (a finite per-rank stream of unequal length would
    leave the longer ranks waiting in a gradient all-reduce at the end of an epoch). Lightning
    therefore sees one endless epoch and never calls ``set_epoch`` (it only does so on samplers,
    not on iterable datasets): passes advance inside the dataset's iterator, and on resume
    :meth:`restore_data_position` (called by :class:`~vldm.training.data_state.DataPosition`
    before the loader is iterated) continues the stream where the checkpoint left it, in
    ``resume_mode`` ``"shard"`` (skip finished shards unread) or ``"exact"`` (bit-identical
    stream; replays the current pass's tar bytes without decoding). Validation takes the first
    ``val_samples`` samples (rounded down to a multiple of the rank count) split by index.

    ``filter`` selects samples by their json (:mod:`vldm.data.shards`); ``base_filter`` is a data
    config's own selection (e.g. ``curated_hq``'s score cuts) that applies together with it, so a
    command-line ``data.filter`` adds conditions instead of replacing them. Both apply to training
    and validation; a validation set left with no sample is refused at setup, naming why.
    ``missing_hint`` ends the error for missing shards: how to make them.
    """

    def __init__(
        self,
        train_shards: ShardSpec,
        val_shards: ShardSpec | None = None,
        kind: str = "video",
        batch_size: int = 8,
        num_workers: int = 0,
        num_frames: int = 8,
        size: int | Sequence[int] = 32,
        shuffle_buffer: int = 256,
        seed: int = 0,
        filter: dict[str, Any] | None = None,  # noqa: A002 - the public name of the option
        val_samples: int = 8,
        resume_mode: str = "shard",
        frame_stride: int | Sequence[int] = 1,
        clip_start: str = "first",
        base_filter: dict[str, Any] | None = None,
        missing_hint: str = MAKE_TOY_HINT,
    ) -> None:
        super().__init__()
        if kind not in ("video", "image"):
            raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
        if resume_mode not in RESUME_MODES:
            raise ValueError(f"resume_mode must be one of {RESUME_MODES}, got {resume_mode!r}")
        self.resume_mode = resume_mode
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.kind = kind
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_frames = num_frames
        self.size = frame_size(size)
        self.window = FrameWindow.of(num_frames or 1, frame_stride, clip_start)  # validated now, not in a worker
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.filter = merge_filters(base_filter, filter)
        self.missing_hint = missing_hint
        self.val_samples = val_samples
        self.train_dataset: ShardDataset | None = None
        self.val_dataset: ShardDataset | None = None
        self._datasets: list[ShardDataset] = []

    def _make(self, shards: list[str], **kw: Any) -> ShardDataset:
        common = dict(shards=shards, size=self.size, seed=self.seed, filter=self.filter, **kw)
        if self.kind == "video":
            dataset: ShardDataset = VideoClipDataset(num_frames=self.num_frames, frame_stride=self.window.strides,
                                                     clip_start=self.window.start, **common)
        else:
            dataset = ImageDataset(**common)
        self._datasets.append(dataset)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Resolve shards (``FileNotFoundError`` with a hint if missing) and build the datasets."""
        if self.train_dataset is None:
            shards = resolve_shards(self.train_shards, self.missing_hint)
            self.train_dataset = self._make(shards, shuffle_buffer=self.shuffle_buffer, repeat=True)
        if self.val_dataset is None and self.val_shards and self.val_samples > 0:
            shards = resolve_shards(self.val_shards, self.missing_hint)
            self.val_dataset = self._make(
                shards, shuffle_buffer=0, repeat=False, max_samples=self.val_samples, shuffle_shards=False
            )
            self._check_val(self.val_dataset)

    def _check_val(self, dataset: ShardDataset) -> None:
        """``ValueError`` when no validation sample passes the filter: names the shards, the filter and
        the fields the samples lack."""
        read, matched, missing = dataset.count_matching(1)
        if matched:
            return
        lacking = ", ".join(f"{n} of {read} lack {key!r}" for key, n in missing.items() if n)
        why = "no samples in them" if not read else f"none of {read} samples passes filter={self.filter}"
        raise ValueError(
            f"validation set is empty: {why} (val_shards={self.val_shards}{'; ' + lacking if lacking else ''}). "
            "Give validation clips of the training kind and with the filtered fields (curated data: the run's "
            "heldout/ split, data.val_shards=<curated>/heldout), relax data.filter, or set data.val_samples=0 "
            "to train without validation")

    def train_dataloader(self) -> DataLoader:
        """Infinite loader of shuffled batches (``drop_last``: all batches are full)."""
        if self.train_dataset is None:
            self.setup("fit")
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """The first ``val_samples`` validation samples, same order every time; ``[]`` if none."""
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return DataLoader(self.val_dataset, batch_size=min(self.batch_size, self.val_samples), num_workers=0)

    def restore_data_position(self, position: dict[str, Any]) -> None:
        """Continue the training stream after ``position`` (saved by ``DataPosition``) on its next iteration."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        self.train_dataset.restore_position(position, self.resume_mode)

    @property
    def num_skipped(self) -> int:
        """Samples skipped so far by every dataset this module created (workers included)."""
        return sum(d.num_skipped for d in self._datasets)


class LatentDataModule(ShardDataModule):
    """:class:`ShardDataModule` over latent shards (``kind`` is ``latent``).

    ``cache_fingerprint`` (from the cache's manifest) names the autoencoder and cached embedders
    the latents came from; the diffusion module refuses to train on a cache of other weights
    (``check_fingerprint=False`` turns that off). Other keyword options (e.g. a resume mode) go to
    :class:`ShardDataModule` unchanged.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        num_frames: int | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        filter: dict[str, Any] | None = None,  # noqa: A002
        val_samples: int = 8,
        check_fingerprint: bool = True,
        kind: str = "latent",
        **options: Any,
    ) -> None:
        if kind != "latent":
            raise ValueError(f"LatentDataModule reads latent shards (kind 'latent'), got kind {kind!r}")
        # size=1: unused, cached latents keep the size they were encoded at
        super().__init__(train_shards, val_shards, kind="video", batch_size=batch_size, num_workers=num_workers,
                         num_frames=num_frames or 0, size=1, shuffle_buffer=shuffle_buffer, seed=seed,
                         filter=filter, val_samples=val_samples, **options)
        self.kind = "latent"
        self.num_frames = num_frames
        self.check_fingerprint = check_fingerprint
        self.manifest: dict[str, Any] | None = None

    @property
    def cache_fingerprint(self) -> str | None:
        if not self.check_fingerprint:
            return None
        if self.manifest is None:
            self.manifest = read_manifest(resolve_shards(self.train_shards))
        return None if self.manifest is None else self.manifest.get("fingerprint")

    def _make(self, shards: list[str], **kw: Any) -> ShardDataset:
        kw.pop("size", None)
        dataset = LatentClipDataset(shards=shards, num_frames=self.num_frames, seed=self.seed, filter=self.filter, **kw)
        self._datasets.append(dataset)
        return dataset
