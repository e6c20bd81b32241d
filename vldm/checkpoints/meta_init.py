"""Build a model's skeleton on the ``meta`` device: shapes only, no memory, no initialisation.

A full-size model (SVD-XT: 1.5 B UNet parameters, plus VAE and CLIP) built normally costs its fp32
size in host memory and seconds of random initialisation, only to be overwritten by a checkpoint.
:func:`build_on_meta` builds it under ``torch.device("meta")``; ``load_state_dict(..., assign=True)``
then gives the parameters and saved buffers the checkpoint's tensors, and
:func:`materialize_buffers` recomputes the buffers a state dict does not hold (a fixed latent scale,
the DDPM sigma ladder) through each owner's ``init_buffers(device)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def build_on_meta(build: Callable[[], M]) -> M:
    """``build()`` with every tensor it creates on the ``meta`` device."""
    with torch.device("meta"):
        return build()


def is_skeleton(module: nn.Module) -> bool:
    """True when the module's parameters are (all) on ``meta``; an empty module is not a skeleton."""
    params = list(module.parameters())
    return bool(params) and all(p.is_meta for p in params)


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on ``meta`` (shared ones under every name)."""
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return [name for name, t in named if t.is_meta]


def materialize_buffers(module: nn.Module, device: torch.device | str) -> None:
    """Recompute, on ``device``, the buffers still on ``meta`` of every submodule that can (``init_buffers``)."""
    for sub in module.modules():
        if hasattr(sub, "init_buffers") and any(b is not None and b.is_meta for b in sub._buffers.values()):
            sub.init_buffers(device)


def move_buffers(module: nn.Module, device: torch.device | str) -> None:
    """Move every (non-meta) buffer to ``device``, keeping its dtype (parameters are left alone)."""
    device = torch.device(device)
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None and not buf.is_meta and buf.device != device:
                sub._buffers[name] = buf.to(device)
