"""Stage 1 -> stage 2: turn a trained image UNet into a video UNet.

Blattmann et al., 2023 ("Align your Latents", "Stable Video Diffusion"): temporal layers are
inserted after every spatial layer. Here the temporal branches start as the identity (the
last layer of each residual branch is zero), so right after :func:`inflate` the video UNet
computes exactly what the image UNet computes, frame by frame, until training moves it.

Going to image-to-video at the same time is supported: extra input channels (the
conditioning-frame latent) get zero weights in ``input_blocks.0.0`` and a new vector
conditioning (``label_emb``, fps / motion bucket / noise augmentation) starts with a zero
last layer, so neither changes the output at initialisation either.
"""

from __future__ import annotations

import torch
from torch import nn

from vldm.nn.temporal import SpatialVideoTransformer, VideoResBlock
from vldm.nn.unet import UNet


TEMPORAL_PARTS = ("time_stack", "time_mixer", "time_pos_embed")


def is_temporal_key(name: str) -> bool:
    """A UNet state-dict key of a temporal layer (``time_stack``, ``time_mixer``, ``time_pos_embed``)."""
    return any(part in name for part in TEMPORAL_PARTS)


def temporal_parameter_names(video_unet: UNet) -> set[str]:
    """Names of the parameters that exist only in the video UNet."""
    return {n for n in video_unet.state_dict() if is_temporal_key(n)}


def zero_temporal_outputs(video_unet: UNet) -> None:
    """Zero the last layer of every temporal residual branch (identity at init)."""
    for module in video_unet.modules():
        layers: list[nn.Module] = []
        if isinstance(module, SpatialVideoTransformer):
            layers = module.temporal_residual_outputs()
        elif isinstance(module, VideoResBlock):
            layers = [module.time_stack.out_layers[-1]]
        for layer in layers:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


@torch.no_grad()
def inflate(image_unet: UNet, in_channels: int | None = None, adm_in_channels: int | None = None,
            merge_factor: float | None = None) -> UNet:
    """Return a video UNet holding ``image_unet``'s weights plus identity-initialised temporal layers.

    ``in_channels``: widen the input conv (new channels zero; SVD uses 8 = 4 noisy + 4 conditioning).
    ``adm_in_channels``: add (or keep) vector conditioning; a new ``label_emb`` starts at zero.
    """
    if image_unet.config.video:
        raise ValueError("inflate expects an image UNet; this one already has temporal layers")
    config = image_unet.config_dict()
    config.update(video=True)
    if in_channels is not None:
        config["in_channels"] = in_channels
    if adm_in_channels is not None:
        config["adm_in_channels"] = adm_in_channels
    if merge_factor is not None:
        config["merge_factor"] = merge_factor
    video_unet = UNet(**config).to(next(image_unet.parameters()).dtype)
    load_image_weights(video_unet, image_unet.state_dict())
    return video_unet


@torch.no_grad()
def load_image_weights(video_unet: UNet, image_state: dict[str, torch.Tensor]) -> None:
    """Fill ``video_unet`` from an image UNet's state dict so that it computes the same function.

    Every image weight must find its place; every video weight not in the image state must be
    temporal, a widened input conv, or a new ``label_emb`` — anything else is an error naming keys.
    """
    if not video_unet.config.video:
        raise ValueError("load_image_weights expects a video UNet")
    zero_temporal_outputs(video_unet)
    target = video_unet.state_dict()
    new_keys = temporal_parameter_names(video_unet)
    if "label_emb.0.0.weight" in target and "label_emb.0.0.weight" not in image_state:
        nn.init.zeros_(video_unet.label_emb[0][2].weight)
        nn.init.zeros_(video_unet.label_emb[0][2].bias)
        new_keys |= {k for k in target if k.startswith("label_emb.")}
    unexpected = set(image_state) - set(target)
    missing = set(target) - set(image_state) - new_keys
    if unexpected or missing:
        raise KeyError(f"image UNet weights do not fit the video UNet: missing {sorted(missing)[:12]}, "
                       f"unexpected {sorted(unexpected)[:12]}")
    for name, value in image_state.items():
        dst = target[name]
        if name == "input_blocks.0.0.weight" and value.shape[1] < dst.shape[1] and value.shape[0] == dst.shape[0]:
            dst.zero_()
            dst[:, : value.shape[1]] = value
        elif value.shape != dst.shape:
            raise KeyError(f"shape mismatch for {name}: image {tuple(value.shape)} vs video {tuple(dst.shape)}")
        else:
            dst.copy_(value)
