"""Stage transitions: start a stage from the previous stage's exported weights.

``full``: the file holds this very model (hq from video, or stage 1 from SD 2.1); every key must
match. A file in the LDM layout (``v2-1_768-ema-pruned``: ``cond_stage_model.*`` and DDPM schedule
buffers) is read through :mod:`vldm.checkpoints.ldm_layout`: its schedule is checked against ours.
``inflate``: the file holds an image model (video from image): its UNet is inflated into this
video UNet (:func:`vldm.nn.inflate.load_image_weights`), its autoencoder and latent scale are
taken over strictly, and the conditioner keeps its own weights (image-to-video conditioning
replaces the text conditioning of stage 1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vldm.io.safe_load import CheckpointError, load_state_dict_file, load_strict
from vldm.nn.inflate import load_image_weights
from vldm.training.module import DiffusionModule

log = logging.getLogger(__name__)

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_ldm_layout(module: DiffusionModule, state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """SGM names for an LDM-layout state dict; its schedule buffers must match the module's."""
    from vldm.checkpoints.ldm_layout import LDM_TEXT, SCHEDULE_BUFFERS, split_ldm_keys, verify_schedule
    from vldm.diffusion.discretization import ddpm_sigmas

    if not any(k.startswith(LDM_TEXT) or k in SCHEDULE_BUFFERS for k in state):
        return state
    names, schedule = split_ldm_keys(list(state))
    sigmas = getattr(module.denoiser, "sigmas", None)
    verify_schedule({k: state[k] for k in schedule}, sigmas if sigmas is not None else ddpm_sigmas(), str(path))
    log.info("%s is in the LDM layout: %s* read as conditioner.embedders.0.*, schedule checked", path, LDM_TEXT)
    return {sgm: state[key] for sgm, key in names.items()}


def inflate_into(module: DiffusionModule, state: dict[str, torch.Tensor], source: str) -> None:
    """Stage 1 -> 2: the image UNet's weights into the video network (temporal layers added as
    identities, :func:`~vldm.nn.inflate.load_image_weights`), the autoencoder and its latent scale."""
    unet = _sub(state, UNET)
    if not unet:
        raise CheckpointError(f"{source} has no {UNET}* keys to inflate")
    load_image_weights(module.network, unet)
    load_strict(module.first_stage_model, _sub(state, FIRST_STAGE), what=f"{source} ({FIRST_STAGE}*)")
    if "scale_factor" in state and module.scale_by_std:
        module.scale_factor.copy_(state["scale_factor"])


def init_from(module: DiffusionModule, path: str | Path, mode: str = "full") -> None:
    state = from_ldm_layout(module, load_state_dict_file(path), path)
    if mode == "full":
        state = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
        if module.model_ema is not None:  # the EMA copy is not exported; it restarts from the loaded weights
            state.update({f"model_ema.{k}": v for k, v in module.model_ema.state_dict().items()})
        load_strict(module, state, what=str(path))
    elif mode == "inflate":
        inflate_into(module, state, str(path))
    else:
        raise ValueError(f"init_from mode must be 'full' or 'inflate', got {mode!r}")
    if module.model_ema is not None:
        module.model_ema.sync(module.network)
    log.info("initialised from %s (%s)", path, mode)


def load_first_stage(module: DiffusionModule, path: str | Path) -> None:
    """Load pretrained autoencoder weights (``first_stage_model.*`` keys, or bare ones)."""
    state = load_state_dict_file(path)
    sub = _sub(state, FIRST_STAGE) or state
    load_strict(module.first_stage_model, sub, what=f"{path} (autoencoder)")
    if "scale_factor" in state and module.scale_by_std:
        module.scale_factor.copy_(state["scale_factor"])
