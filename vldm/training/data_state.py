"""What a resumed run needs besides weights, optimizer and EMA: where the data stream was, and
training noise that does not depend on how the run got to a step.

:class:`DataPosition` keeps, in the checkpoint, the last trained sample of every data reader
(DDP rank x DataLoader worker; see :mod:`vldm.data.shards`) and hands it back to the datamodule
on resume, before the training loader is first iterated. :class:`StepSeed` re-seeds torch's
global generator before every micro-batch from ``(seed, global rank, global step, micro-batch)``:
ranks draw different diffusion noise, sigmas and conditioning dropout (identical noise on every
rank would waste the extra devices), and a resumed run draws exactly what the uninterrupted run
drew at the same step. Model initialisation is not affected: ``pl.seed_everything(seed)`` runs
before the module is built, identically on every rank (and DDP broadcasts rank 0's weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from vldm.data.shards import POSITION_KEY
from vldm.utils.distributed import process_group_initialized, process_group_rank_world


def step_seed(seed: int, rank: int, step: int, micro_batch: int) -> int:
    """A well-mixed 63-bit seed for one micro-batch of one rank (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([seed, rank, step, micro_batch]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class StepSeed(Callback):
    """Seeds torch's global RNG before each training micro-batch (see the module doc)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._step, self._micro = -1, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step  # the optimizer steps done; constant over an accumulation window
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        torch.manual_seed(step_seed(self.seed, trainer.global_rank, step, self._micro))


class DataPosition(Callback):
    """Saves ``{"world": readers, "workers": {reader: [pass, position, floor]}}`` — every reader's
    last trained sample, gathered from all ranks — and restores it through
    ``datamodule.restore_data_position`` (a no-op for data modules without one)."""

    def __init__(self, datamodule: Any = None) -> None:
        self.datamodule = datamodule
        self.world = 0
        self.workers: dict[int, list[int]] = {}
        self._pending: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        rows = batch.get(POSITION_KEY) if isinstance(batch, dict) else None
        self._pending = [] if rows is None else rows.tolist()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """A batch counts as trained once its step completed (before this step's checkpoint is written)."""
        for reader, world, epoch, position, floor in self._pending:  # a reader's samples arrive in order
            self.workers[reader] = [epoch, position, floor]
            self.world = world
        self._pending = []

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank when a checkpoint is written (rank 0's result is saved)."""
        local = {"world": self.world, "workers": dict(self.workers)}
        parts = [local]
        if process_group_initialized():
            parts = [None] * process_group_rank_world()[1]
            torch.distributed.all_gather_object(parts, local)
        workers: dict[str, list[int]] = {}
        world = 0
        for part in parts:
            world = max(world, part["world"])
            workers.update({str(k): list(v) for k, v in part["workers"].items()})
        return {"world": world, "workers": workers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.world = int(state_dict.get("world", 0))
        self.workers = {int(k): [int(x) for x in v] for k, v in state_dict.get("workers", {}).items()}
        restore = getattr(self.datamodule, "restore_data_position", None)
        if restore is not None and self.workers:
            restore({"world": self.world, "workers": self.workers})


class ClipRates(Callback):
    """Counts the frame rates (``fps_id + 1``) of the clips this rank trained on, kept in the checkpoint,
    so the exported weights can record the rate the run trained at (``sample.py``'s fps preset)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        fps_id = batch.get("fps_id") if isinstance(batch, dict) else None
        if fps_id is None:
            return
        for value in torch.as_tensor(fps_id).reshape(-1).tolist():
            self.counts[int(value) + 1] = self.counts.get(int(value) + 1, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {str(k): v for k, v in self.counts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = {int(k): int(v) for k, v in state_dict.get("counts", {}).items()}
