"""Start a training stage from the previous stage's exported weights (:mod:`vldm.checkpoints.stage_weights`).

The EMA copy is not exported: it restarts from the loaded weights.
"""

from __future__ import annotations

from pathlib import Path

from vldm.checkpoints.stage_weights import load_stage_weights
from vldm.training.module import DiffusionModule


def init_from(module: DiffusionModule, path: str | Path, mode: str = "full",
              temporal_from: str | Path | None = None) -> None:
    """Fill ``module``'s model from ``path`` (``full``, ``inflate`` or ``i2v``; ``temporal_from``: the temporal
    layers' motion module or video model) and restart its EMA from it."""
    load_stage_weights(module.diffusion, path, mode, temporal_from)
    if module.model_ema is not None:
        module.model_ema.sync(module.network)
