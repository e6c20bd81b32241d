"""Fill a model from an earlier stage's weights: the same model (``full``), an image model inflated into a
video model (``inflate``), or the text-to-video model widened into image-to-video (``i2v``).

``full``: the file holds this very model (hq from video, or stage I from SD 2.1); every key must
match. A file in the LDM layout (``v2-1_768-ema-pruned``: ``cond_stage_model.*`` and DDPM schedule
buffers) is read through :mod:`vldm.checkpoints.ldm_layout`: its schedule is checked against ours.
``inflate``: the file holds an image model (video from image, Blattmann et al., 2023): its UNet is
inflated into this video UNet (:func:`vldm.nn.inflate.load_image_weights`), its autoencoder and
latent scale are taken over strictly; a text-to-video model takes the file's text tower too (captions
are read by the tower the UNet learnt them with), an image-to-video model keeps its own conditioner.
``i2v``: the file holds the text-to-video base model (Blattmann et al., 2023, Sec. 4): its UNet goes into
this image-to-video UNet with the input conv and the vector embedding widened, new parts zero
(:func:`vldm.nn.widen.load_widened`); its autoencoder and latent scale are taken over strictly; the
conditioner is this model's own (the CLIP image token replaces the caption's context).
``inflate`` with ``temporal_from``: the temporal layers (and the fps / motion-bucket embedding) then come
from a motion module or another video model (:mod:`vldm.checkpoints.motion_module`), so the result holds
the image model's spatial weights and the module's temporal weights exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vldm.checkpoints.motion_module import attach_temporal, temporal_state
from vldm.io.safe_load import CheckpointError, describe_file, load_state_dict_file, load_strict
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.nn.inflate import load_image_weights
from vldm.nn.widen import load_widened

log = logging.getLogger(__name__)

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."
TEXT_TOWER = "conditioner.embedders.0."  # an image model's only embedder: the caption's
INIT_MODES = ("full", "inflate", "i2v")


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
    if model.task == "text_to_video":
        take_text_tower(model, state, source)


def take_text_tower(model: LatentDiffusion, state: dict[str, torch.Tensor], source: str) -> None:
    """The image model's text tower (``conditioner.embedders.0.*``; SD 2.1: ``cond_stage_model.*``) into the
    text-to-video model's ``txt`` embedder, strictly."""
    tower = sub_state(state, TEXT_TOWER)
    if not tower:
        raise CheckpointError(f"{source} has no text tower ({TEXT_TOWER}*): the text-to-video model reads captions "
                              f"with the tower its image stage learnt them with")
    index = model.conditioner.input_keys.index("txt")
    load_strict(model.conditioner.embedders[index], tower, what=f"{source} ({TEXT_TOWER}*, the text tower)")


def widen_into(model: LatentDiffusion, state: dict[str, torch.Tensor], source: str) -> None:
    """Text-to-video -> image-to-video: the base model's UNet widened into this one, its autoencoder and latent scale."""
    if not model.image_to_video:
        raise CheckpointError("init_mode i2v fills an image-to-video model; this stage's model is "
                              f"{model.task.replace('_', '-')}")
    unet = sub_state(state, UNET)
    if not unet:
        raise CheckpointError(f"{source} has no {UNET}* keys to widen")
    if not any(k.startswith("time_stack") or ".time_stack." in k for k in unet):
        raise CheckpointError(f"{source} holds an image UNet (no temporal layers): init_mode i2v starts from a "
                              f"text-to-video stage ('video' or 'hq')")
    load_widened(model.network, unet)
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
    if mode == "inflate":
        return "an image model (a vldm 'image' stage, or SD 2.1) to inflate into this video model"
    if mode == "i2v":
        return "a text-to-video model (a vldm 'video' or 'hq' stage) to widen into this image-to-video model"
    kinds = {"image_to_video": "image-to-video model (a vldm 'i2v' stage)",
             "text_to_video": "text-to-video model (a vldm 'video' or 'hq' stage)",
             "text_to_image": "text-to-image model (a vldm 'image' stage)"}
    kind = kinds[model.task]
    hints = {"image_to_video": "; a text-to-video stage's weights go into it with stage.init_mode=i2v",
             "text_to_video": "; an image stage's weights go into it with stage.init_mode=inflate"}
    hint = hints.get(model.task, "")
    return f"this very {kind} with the same sizes{hint}"


def load_stage_weights(model: LatentDiffusion, path: str | Path, mode: str = "full",
                       temporal_from: str | Path | None = None) -> None:
    """Fill ``model`` from the weights at ``path`` (a file or a stage's run directory) as ``mode`` (see the module doc)
    says; with ``temporal_from`` (``inflate`` only) the temporal layers come from that motion module or video model."""
    if mode not in INIT_MODES:
        raise ValueError(f"init_from mode must be one of {INIT_MODES}, got {mode!r}")
    if temporal_from is not None and mode != "inflate":
        raise ValueError(f"temporal_from ({temporal_from}) attaches temporal layers to an inflated image model: it needs "
                         f"init_mode inflate, got {mode!r}")
    temporal = temporal_state(temporal_from) if temporal_from is not None else None
    path = stage_weights_file(path)
    state = from_ldm_layout(model, load_state_dict_file(path), path)
    try:
        if mode == "full":
            load_strict(model, {k: v for k, v in state.items() if not k.startswith("model_ema.")}, what=str(path))
        elif mode == "inflate":
            inflate_into(model, state, str(path))
        else:
            widen_into(model, state, str(path))
    except (CheckpointError, RuntimeError, ValueError, KeyError) as err:
        what = describe_file(path)
        raise CheckpointError(f"init_from {path} (mode {mode}): the file is {what or 'not a file vldm described'}; "
                              f"expected {expected_weights(model, mode)}. {err}") from err
    if temporal is not None:
        attach_temporal(model.network, temporal, set(sub_state(state, UNET)), str(temporal_from))
        log.info("initialised from %s (%s), temporal layers from %s", path, mode, temporal_from)
        return
    log.info("initialised from %s (%s)", path, mode)


def load_first_stage(model: LatentDiffusion, path: str | Path) -> None:
    """Load pretrained autoencoder weights (``first_stage_model.*`` keys, or bare ones)."""
    state = load_state_dict_file(path)
    load_strict(model.first_stage_model, sub_state(state, FIRST_STAGE) or state, what=f"{path} (autoencoder)")
    take_scale_factor(model, state)
