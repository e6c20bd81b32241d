"""The parts of a latent diffusion model that memory planning places: one place that names them.

Components (the planner's vocabulary): the UNet (streamable per block: ``input_blocks.i``,
``middle_block``, ``output_blocks.i``; its embeddings and ``out`` stay resident), the image
encoder (the conditioner's learned towers: CLIP image tower for image-to-video, text tower for
text-to-image), the conditioning-frame encoder (the VAE ``Encoder`` that the SVD conditioner runs
on the first frame; in SVD files a separate copy, in vldm runs the first stage's own), and the VAE
decoder. The quant convs are tiny and stay resident. Whatever sampling never runs (the first
stage's encoder when the conditioner has its own, the decoder of the conditioner's VAE copy) is
listed as unused, so that it can stay on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vldm.conditioning.scalar_embedders import ConditioningFrameEncoder


@dataclass
class Components:
    network: nn.Module
    conditioner: nn.Module
    first_stage: nn.Module
    unet_blocks: list[nn.Module] = field(default_factory=list)
    unet_rest: list[nn.Module] = field(default_factory=list)
    image_encoders: list[nn.Module] = field(default_factory=list)
    cond_frame_embedders: list[nn.Module] = field(default_factory=list)  # the ConditioningFrameEncoder modules
    cond_frame_encoders: list[nn.Module] = field(default_factory=list)   # the VAE Encoders they run
    small_resident: list[nn.Module] = field(default_factory=list)
    unused: list[nn.Module] = field(default_factory=list)


def _parts_of(module: object) -> tuple[nn.Module, nn.Module, nn.Module]:
    network = getattr(module, "network")
    conditioner = getattr(module, "conditioner")
    first_stage = getattr(module, "first_stage", None)
    if first_stage is None:
        first_stage = getattr(module, "first_stage_model")
    return network, conditioner, first_stage


def _autoencoder_pieces(ae: nn.Module, encoder_used: bool, decoder_used: bool
                        ) -> tuple[list[nn.Module], list[nn.Module]]:
    """(small resident, unused) pieces of one autoencoder."""
    small, unused = [], []
    for piece, used in (("quant_conv", encoder_used), ("post_quant_conv", decoder_used)):
        m = getattr(ae, piece, None)
        if m is not None:
            (small if used else unused).append(m)
    if not encoder_used:
        unused.append(ae.encoder)
    if not decoder_used:
        unused.append(ae.decoder)
    return small, unused


def components(module: object) -> Components:
    """Split a ``DiffusionModule`` or ``LatentDiffusionSampler`` into the planner's components."""
    network, conditioner, first_stage = _parts_of(module)
    parts = Components(network, conditioner, first_stage)
    parts.unet_blocks = [*network.input_blocks, network.middle_block, *network.output_blocks]
    parts.unet_rest = [m for name, m in network.named_children()
                       if name not in ("input_blocks", "middle_block", "output_blocks")]
    cond_aes = []
    for embedder in conditioner.embedders:
        if isinstance(embedder, ConditioningFrameEncoder):
            parts.cond_frame_embedders.append(embedder)
            if embedder.encoder is not None:
                cond_aes.append(embedder.encoder)
                parts.cond_frame_encoders.append(embedder.encoder.encoder)
        elif any(True for _ in embedder.parameters()):
            parts.image_encoders.append(embedder)
    shared = any(ae is first_stage for ae in cond_aes)
    small, unused = _autoencoder_pieces(first_stage, encoder_used=shared, decoder_used=True)
    for ae in cond_aes:
        if ae is not first_stage:
            s, u = _autoencoder_pieces(ae, encoder_used=True, decoder_used=False)
            small, unused = small + s, unused + u
    parts.small_resident, parts.unused = small, unused
    return parts
