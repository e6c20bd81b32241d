"""A data module whose loader workers stall like a hung decoder until the test opens a gate, and a step probe."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from pytorch_lightning.callbacks import Callback

from vldm.training.datamodule import ShardDataModule


class _GatedDecode:
    """``decode`` that passes ``open_samples`` samples per worker, then waits for the file ``gate``."""

    def __init__(self, decode: Callable[..., Any], gate: str, open_samples: int) -> None:
        self.decode, self.gate, self.open_samples, self.count = decode, Path(gate), open_samples, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        while self.count > self.open_samples and not self.gate.exists():
            time.sleep(0.05)  # the stalled decoder: no result until the gate opens
        return self.decode(*args, **kwargs)


class GatedDataModule(ShardDataModule):
    """:class:`ShardDataModule` whose training workers each decode ``open_samples`` samples, then stall."""

    def __init__(self, gate: str, open_samples: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate, self.open_samples = gate, open_samples

    def _make(self, shards: list[str], **kw: Any):
        dataset = super()._make(shards, **kw)
        if kw.get("repeat"):
            dataset.decode = _GatedDecode(dataset.decode, self.gate, self.open_samples)
        return dataset


class StepMarker(Callback):
    """Test probe: touches ``<folder>/step-<global step>`` at the end of every training step."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"step-{trainer.global_step}").touch()


class SignalAtStepEnd(Callback):
    """Test probe: sends ``signum`` to its own process at the end of training step ``step`` (global step
    ``step + 1``), after the stop handler's end-of-step hook and before Lightning logs the step."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step + 1:
            os.kill(os.getpid(), self.signum)
