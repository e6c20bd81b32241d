"""Learning-rate schedules shared by the training modules."""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, max_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to zero at ``max_steps``."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr schedule must be 'constant' or 'cosine', got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or max_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def configure(optimizer: torch.optim.Optimizer, max_steps: int, schedule: str = "constant",
              warmup_steps: int = 0) -> dict:
    """The ``configure_optimizers`` return value with a per-step schedule (kept in checkpoints)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, max_steps, schedule, warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
