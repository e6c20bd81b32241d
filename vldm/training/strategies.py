"""FSDP settings for the diffusion UNet: what to shard, in which precision, what to recompute.

Used by ``configs/trainer/fsdp.yaml`` through Lightning's ``FSDPStrategy`` (PyTorch FSDP,
``torch.distributed.fsdp``). The wrap unit is the UNet block (SGM's ``input_blocks[i]``,
``middle_block``, ``output_blocks[i]``): FSDP gathers a unit's parameters in the unit's
``forward``, and activation checkpointing recomputes a unit's ``forward``, so a block must be a
module that the UNet calls. A UNet whose blocks are plain ``nn.ModuleList`` s run layer by layer
by the UNet itself has no such module (wrapping its layers instead breaks the UNet's per-layer
type dispatch); for it the unit is the whole UNet (optimizer state and gradients still sharded,
the weights gathered for the whole forward) and no activation checkpointing is applied (use the
UNet's own ``gradient_checkpointing`` then).

Every UNet in the module is wrapped, itself too: the EMA copy (``model_ema.shadow``) then has the
same units with the same parameter order as the live network, so on every rank both hold
shards of equal shape and :class:`~vldm.training.ema.EMA` updates shard by shard. The UNet unit
holds the parameters outside the blocks (time and label embeddings, output head).

The frozen parts — the first-stage autoencoder and a conditioner with no trainable weights (CLIP
towers, the conditioning-frame encoder) — stay out of FSDP (:class:`DiffusionFSDPStrategy`):
replicated on every rank as under DDP, with no optimizer state to shard. FSDP would refuse them
anyway (OpenCLIP's ``logit_scale`` is a 0-d parameter, which FSDP cannot flatten).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.fsdp import MixedPrecision
from torch.distributed.fsdp.wrap import _Policy

from vldm.nn.unet import UNet

log = logging.getLogger(__name__)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module inside an FSDP wrapper (activation checkpointing is applied after wrapping)."""
    inner = getattr(module, "_fsdp_wrapped_module", None)
    return inner if inner is not None else module


def _has_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """``input_blocks[i]``, ``middle_block``, ``output_blocks[i]`` of one UNet, in order."""
    unet = _unwrapped(unet)
    blocks = [_unwrapped(b) for b in unet.input_blocks]
    blocks.append(_unwrapped(unet.middle_block))
    blocks += [_unwrapped(b) for b in unet.output_blocks]
    return blocks


def callable_blocks(unet: nn.Module) -> bool:
    """Whether the UNet's blocks are modules with a ``forward`` (that the UNet calls)."""
    return all(_has_forward(b) for b in unet_blocks(unet))


def block_units(root: nn.Module, include_unet: bool = True) -> list[nn.Module]:
    """The modules to wrap in ``root``: for every UNet, its blocks when they are callable, and
    with ``include_unet`` the UNet itself (see the module doc)."""
    units: list[nn.Module] = []
    for module in root.modules():
        if not isinstance(module, UNet):
            continue
        if include_unet:
            units.append(module)
        if callable_blocks(module):
            units += unet_blocks(module)
        elif not include_unet:
            log.warning("UNet blocks are not callable modules: no activation checkpointing by block; set "
                        "model.diffusion.network.gradient_checkpointing=true to recompute inside the UNet instead")
    return units


class UNetBlockPolicy(_Policy):
    """FSDP / activation-checkpointing policy over :func:`block_units`.

    For ``auto_wrap_policy`` keep ``include_unet=True`` (see the module doc); for
    ``activation_checkpointing_policy`` use ``include_unet=False`` (recompute block by block, not
    the whole network at once).
    """

    def __init__(self, include_unet: bool = True) -> None:
        self.include_unet = include_unet

    def _run_policy(self, root_module: nn.Module, ignored_modules: set[nn.Module],
                    root_kwargs: dict[str, Any]) -> dict[nn.Module, dict[str, Any]]:
        return {m: copy.copy(root_kwargs) for m in block_units(root_module, self.include_unet)
                if m not in ignored_modules}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(include_unet={self.include_unet})"


def mixed_precision(param_dtype: str = "bfloat16", reduce_dtype: str = "float32",
                    buffer_dtype: str = "float32") -> MixedPrecision:
    """FSDP mixed precision from dtype names: compute in ``param_dtype`` (bf16), all-reduce
    gradients in ``reduce_dtype`` (fp32: summing many ranks' bf16 gradients loses bits) and keep
    buffers (the latent scale factor) in ``buffer_dtype``. The sharded master weights and the
    optimizer state stay fp32."""
    dtypes = {name: getattr(torch, name, None) for name in (param_dtype, reduce_dtype, buffer_dtype)}
    for name, dtype in dtypes.items():
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a torch dtype: {name!r}")
    return MixedPrecision(param_dtype=dtypes[param_dtype], reduce_dtype=dtypes[reduce_dtype],
                          buffer_dtype=dtypes[buffer_dtype])


#: Attributes of a diffusion module that FSDP leaves alone when none of their weights train.
FROZEN_PARTS = ("first_stage_model", "conditioner")


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The module's :data:`FROZEN_PARTS` that have weights and none that train."""
    parts = [getattr(module, name, None) for name in FROZEN_PARTS]
    return [p for p in parts if isinstance(p, nn.Module) and any(True for _ in p.parameters())
            and not any(q.requires_grad for q in p.parameters())]


class DiffusionFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the module's frozen parts as FSDP ``ignored_modules``
    (moved to the rank's device, replicated); what trains — the UNet, its EMA copy — is sharded."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        frozen = frozen_parts(model)
        if frozen:
            self.kwargs["ignored_modules"] = frozen
            for part in frozen:
                part.to(self.root_device)
            log.info("FSDP: %d frozen part(s) replicated, not sharded: %s", len(frozen),
                     ", ".join(type(p).__name__ for p in frozen))
        return super()._setup_model(model)
