"""Build a module's skeleton: parameters on the ``meta`` device, buffers real.

A full-size model (SVD-XT: 1.5 B UNet parameters, plus VAE and CLIP) built normally costs its
fp32 size in host memory and seconds of random initialisation, only to be overwritten by a
checkpoint. Under :func:`parameters_on_meta` every parameter registered while the module is
built is moved to ``meta`` as soon as it is registered (so initialisers run on shapes only),
while buffers — often computed, not stored (the DDPM sigma ladder, CLIP's attention mask, a
fixed latent scale factor) — stay real. ``load_state_dict(..., assign=True)`` then fills the
parameters with the checkpoint's tensors. This is the idea of ``accelerate``'s
``init_empty_weights(include_buffers=False)``, written for vldm without that dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within the block, parameters registered on any module are moved to ``meta``.

    ``nn.Module.register_parameter`` is patched for the duration of the block and restored on
    exit; do not build other models in other threads meanwhile.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            moved = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            moved.__dict__.update(param.__dict__)
            module._parameters[name] = moved

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def is_skeleton(module: nn.Module) -> bool:
    """True when the module's parameters are (all) on ``meta``; an empty module is not a skeleton."""
    params = list(module.parameters())
    return bool(params) and all(p.is_meta for p in params)


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on ``meta`` (shared ones under every name)."""
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return [name for name, t in named if t.is_meta]


def move_buffers(module: nn.Module, device: torch.device | str) -> None:
    """Move every (non-meta) buffer to ``device``, keeping its dtype (parameters are left alone)."""
    device = torch.device(device)
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None and not buf.is_meta and buf.device != device:
                sub._buffers[name] = buf.to(device)
