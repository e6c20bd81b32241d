"""Export a trained module's weights as one safetensors file in the SGM key layout.

The EMA weights (when kept) replace ``model.diffusion_model.*``; the EMA copy itself is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vldm.io.safe_load import save_safetensors


def export_state(module: nn.Module, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model's state dict (a training module's ``diffusion``), its UNet replaced by the EMA copy."""
    model = getattr(module, "diffusion", module)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}
    ema = getattr(module, "model_ema", None)
    if use_ema and ema is not None:
        for name, value in ema.shadow.state_dict().items():
            state[f"model.diffusion_model.{name}"] = value
    return state


def export_safetensors(module: nn.Module, path: str | Path, metadata: dict | None = None,
                       use_ema: bool = True) -> Path:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return save_safetensors(export_state(module, use_ema), path, meta)
