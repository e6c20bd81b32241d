"""Fill a model from an earlier stage's weights: the same model (``full``) or an image model inflated into a video model.

``full``: the file holds this very model (hq from video, or stage I from SD 2.1); every key must
match. A file in the LDM layout (``v2-1_768-ema-pruned``: ``cond_stage_model.*`` and DDPM schedule
buffers) is read through :mod:`vldm.checkpoints.ldm_layout`: its schedule is checked against ours.
``inflate``: the file holds an image model (video from image, Blattmann et al., 2023): its UNet is
inflated into this video UNet (:func:`vldm.nn.inflate.load_image_weights`), its autoencoder and
latent scale are taken over strictly, and the conditioner keeps its own weights (image-to-video
conditioning replaces the text conditioning of stage I).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vldm.io.safe_load import CheckpointError, describe_file, load_state_dict_file, load_strict
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.nn.inflate import load_image_weights

log = logging.getLogger(__name__)

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."
INIT_MODES = ("full", "inflate")


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_ldm_layout(model: LatentDiffusion, state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """SGM names for an LDM-layout state dict; its schedule buffers must match the model's."""
    from vldm.checkpoints.ldm_layout import LDM_TEXT, SCHEDULE_BUFFERS, split_ldm_keys, verify_schedule
    from vldm.diffusion.discretization import ddpm_sigmas

    if not any(k.startswith(LDM_TEXT) or k in SCHEDULE_BUFFERS for k in state):
        return state
    names, schedule = split_ldm_keys(list(state))
    sigmas = getattr(model.denoiser, "sigmas", None)
    verify_schedule({k: state[k] for k in schedule}, sigmas if sigmas is not None else ddpm_sigmas(), str(path))
    log.info("%s is in the LDM layout: %s* read as conditioner.embedders.0.*, schedule checked", path, LDM_TEXT)
    return {sgm: state[key] for sgm, key in names.items()}


def take_scale_factor(model: LatentDiffusion, state: dict[str, torch.Tensor]) -> None:
    """A measured latent scale (``scale_by_std``) is inherited from the file that holds one."""
    if "scale_factor" in state and model.scale_by_std:
        model.scale_factor.copy_(state["scale_factor"])


def inflate_into(model: LatentDiffusion, state: dict[str, torch.Tensor], source: str) -> None:
    """Stage I -> II: the image UNet's weights into the video network (temporal layers added as
    identities, :func:`~vldm.nn.inflate.load_image_weights`), the autoencoder and its latent scale."""
    unet = sub_state(state, UNET)
    if not unet:
        raise CheckpointError(f"{source} has no {UNET}* keys to inflate")
    load_image_weights(model.network, unet)
    load_strict(model.first_stage_model, sub_state(state, FIRST_STAGE), what=f"{source} ({FIRST_STAGE}*)")
    take_scale_factor(model, state)


def stage_weights_file(path: str | Path) -> Path:
    """The weights file of ``path``: the file itself, or a stage's run directory's ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"init_from: {path} is a directory without model.safetensors; give a finished "
                                    f"stage's run directory (train.py writes its model.safetensors at the end) or "
                                    f"a weights file (.safetensors / .ckpt)")
        return weights
    return path


def expected_weights(model: LatentDiffusion, mode: str) -> str:
    """What a file must hold to initialise ``model`` as ``mode``, in words."""
    video = bool(getattr(getattr(model.network, "config", None), "video", False))
    if mode == "inflate":
        return "an image model (a vldm 'image' stage, or SD 2.1) to inflate into this video model"
    kind = "image-to-video model (a vldm 'video' or 'hq' stage)" if video else "text-to-image model (a vldm 'image' stage)"
    hint = "; an image stage's weights go into a video model with stage.init_mode=inflate" if video else ""
    return f"this very {kind} with the same sizes{hint}"


def load_stage_weights(model: LatentDiffusion, path: str | Path, mode: str = "full") -> None:
    """Fill ``model`` from the weights at ``path`` (a file or a stage's run directory) as ``mode`` (see the module doc) says."""
    if mode not in INIT_MODES:
        raise ValueError(f"init_from mode must be one of {INIT_MODES}, got {mode!r}")
    path = stage_weights_file(path)
    state = from_ldm_layout(model, load_state_dict_file(path), path)
    try:
        if mode == "full":
            load_strict(model, {k: v for k, v in state.items() if not k.startswith("model_ema.")}, what=str(path))
        else:
            inflate_into(model, state, str(path))
    except (CheckpointError, RuntimeError, ValueError) as err:
        what = describe_file(path)
        raise CheckpointError(f"init_from {path} (mode {mode}): the file is {what or 'not a file vldm described'}; "
                              f"expected {expected_weights(model, mode)}. {err}") from err
    log.info("initialised from %s (%s)", path, mode)


def load_first_stage(model: LatentDiffusion, path: str | Path) -> None:
    """Load pretrained autoencoder weights (``first_stage_model.*`` keys, or bare ones)."""
    state = load_state_dict_file(path)
    load_strict(model.first_stage_model, sub_state(state, FIRST_STAGE) or state, what=f"{path} (autoencoder)")
    take_scale_factor(model, state)
