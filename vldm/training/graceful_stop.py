"""SIGINT (Ctrl-C) and SIGTERM stop training with a checkpoint the run resumes from.

While training, the first SIGINT or SIGTERM is handled here (Lightning's own handlers are set aside
for the duration and restored after). In one process, while it waits for data or computes a
step's loss and gradients, the work is broken off at once and ``last.ckpt`` is written at the last
completed step (weights, optimizer and EMA are untouched until the optimizer step; the data
position counts a batch only once its step completed, see
:class:`~vldm.training.data_state.DataPosition`). From the optimizer step to the end of the step,
the stop waits for the step to end, then writes ``last.ckpt`` and stops the Trainer; after a step's
end (while Lightning logs its metrics) and during validation, the Trainer is told to stop before it
fetches more data and ``last.ckpt`` is written when training ends, so every completed step keeps
its logged metrics. A second signal stops at once without a checkpoint. On several
ranks the request is shared at the end of every step (one all-reduce of a flag) and every rank stops
there, since writing a checkpoint is collective. :class:`~vldm.training.run.train_stage` then raises
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch.utils.data.dataloader import _BaseDataLoaderIter

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def waiting_for_data(frame: FrameType | None) -> bool:
    """True when ``frame`` (where a signal interrupted the main thread) is inside a DataLoader's ``__next__``."""
    fetch = _BaseDataLoaderIter.__next__.__code__
    while frame is not None:
        if frame.f_code is fetch:
            return True
        frame = frame.f_back
    return False


class StopRequested(Exception):
    """Raised from the signal handler to break off a wait for data; caught by :class:`GracefulStop`."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal; ``checkpoint`` (if not None) holds the step reached."""

    def __init__(self, message: str, signum: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint


class GracefulStop(Callback):
    """Saves ``checkpoint`` and stops the Trainer on SIGINT / SIGTERM (see the module doc)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.signum: int | None = None
        self.saved: Path | None = None
        self._breakable = True  # stopping now loses nothing of a completed step
        self._immediate = True  # one process, no gradient accumulation
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum
        name = signal.Signals(signum).name
        if self._immediate and (self._breakable or waiting_for_data(frame)):
            log.warning("%s: stopping now; saving a checkpoint", name)
            raise StopRequested(name)
        if self._immediate and self._trainer is not None:
            self._trainer.should_stop = True  # takes effect before the next fetch, if the step has ended
        log.warning("%s: stopping after this step (a second signal stops at once, without a checkpoint)", name)

    def _install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(str(self.checkpoint))
        self.saved = self.checkpoint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._immediate = trainer.world_size == 1 and trainer.accumulate_grad_batches == 1
        self._trainer = trainer
        self._install()  # after Lightning registered its handlers for the fit

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._breakable = True  # the previous step is logged; this one has changed nothing yet

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._breakable = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            if self.signum is None:
                self.signum = signal.SIGTERM  # another rank was signalled
            self._save(trainer)
            trainer.should_stop = True
        # still unbreakable: Lightning logs this step's metrics after the hook; the next fetch is breakable

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._breakable = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        self._trainer = None
        if self.requested and self.saved is None:  # stopped after a step's end, before fetching more data
            self._save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        self._trainer = None
        if isinstance(exception, StopRequested):
            self._save(trainer)
