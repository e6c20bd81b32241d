"""Apply a :class:`~vldm.sampling.memory_plan.MemoryPlan` to a model: dtypes, devices, streaming, chunking.

Weights are cast in place: the UNet and the image encoder to ``plan.dtype``, the VAE decoder and
the conditioning-frame encoder to ``plan.vae_dtype``. Resident components move to the device,
streamed ones stay on the CPU with hooks (:mod:`vldm.sampling.offload`), parts that sampling never
runs go to the CPU. The conditioning-frame embedder gets hooks casting its input to the VAE dtype
and its latent back to float32; the UNet's inputs are cast by the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.hooks import RemovableHandle

from vldm.nn.attention import set_chunking
from vldm.sampling.components import Components, components
from vldm.sampling.memory_plan import MemoryPlan
from vldm.sampling.offload import Streamer, cast_io, stream


@dataclass
class Placement:
    """What :func:`apply_plan` attached; ``remove()`` detaches it (weights stay where they are)."""

    parts: Components
    streamer: Streamer | None = None
    hooks: list[RemovableHandle] = field(default_factory=list)

    def remove(self) -> None:
        if self.streamer is not None:
            self.streamer.remove()
            self.streamer = None
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        set_chunking(self.parts.network, None, None)


def apply_plan(model: object, plan: MemoryPlan, device: torch.device | str) -> Placement:
    """Cast, place and hook the components of ``model`` (a sampler or a ``DiffusionModule``) per ``plan``."""
    device = torch.device(device)
    parts = components(model)
    weights, vae = plan.torch_dtype, plan.torch_vae_dtype
    for m in parts.unused:
        m.to("cpu")
    groups = {  # component -> (modules, dtype)
        "unet": ([parts.network], weights),
        "image_encoder": (parts.image_encoders, weights),
        "cond_frame_encoder": (parts.cond_frame_encoders, vae),
        "vae_decoder": ([parts.first_stage.decoder], vae),
    }
    units = []  # cast where the weights will live, so that no second full copy is ever made on the device
    for name, (modules, dtype) in groups.items():
        if getattr(plan, name) == "device":
            for m in modules:
                m.to(device=device, dtype=dtype)
        elif name == "unet":
            units += parts.unet_blocks
            for m in parts.unet_blocks:
                m.to(device="cpu", dtype=dtype)
            for m in parts.unet_rest:
                m.to(device=device, dtype=dtype)
        else:
            units += modules
            for m in modules:
                m.to(device="cpu", dtype=dtype)
    for m in parts.small_resident:
        m.to(device=device, dtype=vae)
    placement = Placement(parts)
    if units:
        placement.streamer = stream(units, device)
    for embedder in parts.cond_frame_embedders:
        placement.hooks += cast_io(embedder, vae, torch.float32)
    set_chunking(parts.network, plan.attention_chunk, plan.ff_chunk)
    return placement
