"""Export a trained module's weights as one safetensors file in the SGM key layout.

The EMA weights (when kept) replace ``model.diffusion_model.*``; the EMA copy itself is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vldm.io.safe_load import save_safetensors

UNET_PREFIX = "model.diffusion_model."
MODEL_PREFIX = "diffusion."  # a training module holds its model as ``diffusion``
EMA_PREFIX = "model_ema."
EMA_SHADOW_PREFIX = "model_ema.shadow."


def export_state_dict(state: Mapping[str, torch.Tensor], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """A module's state dict in the export layout: the model's keys (without a training module's
    ``diffusion.``), ``model_ema.shadow.*`` (when kept and ``use_ema``) replacing
    ``model.diffusion_model.*``, every ``model_ema.*`` entry dropped."""
    weights = {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    if use_ema:
        weights.update({UNET_PREFIX + k[len(EMA_SHADOW_PREFIX):]: v for k, v in state.items()
                        if k.startswith(EMA_SHADOW_PREFIX)})
    return weights


def export_state(module: nn.Module, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """:func:`export_state_dict` of ``module.state_dict()``."""
    return export_state_dict(module.state_dict(), use_ema)


def export_metadata(metadata: Mapping | None) -> dict[str, str]:
    """safetensors metadata: strings kept, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}


def fps_record(clips_per_fps: Mapping[int, int]) -> str:
    """The weights metadata ``fps`` of a run: the rate its clips were trained at (``fps_id + 1``), as an
    int when there was one rate, else JSON ``{fps: number of clips}`` (``sample.py`` presets the most frequent)."""
    counts = {int(fps): int(n) for fps, n in clips_per_fps.items() if n}
    if not counts:
        raise ValueError("no training clips counted: nothing to record as the run's fps")
    if len(counts) == 1:
        return str(next(iter(counts)))
    return json.dumps({str(fps): counts[fps] for fps in sorted(counts)})


def export_safetensors(module: nn.Module, path: str | Path, metadata: dict | None = None,
                       use_ema: bool = True) -> Path:
    return save_safetensors(export_state(module, use_ema), path, export_metadata(metadata))
