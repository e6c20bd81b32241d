"""Motion modules: a video model's temporal layers alone, to attach to another image model of the same
architecture (Blattmann et al., 2023, "Align your Latents", Sec. 3.1 / 4.1.2: temporal layers trained once
turn other fine-tuned image backbones into video models; AnimateDiff's plug-in motion modules).

A motion module is a safetensors file holding the video-only weights of a video UNet, under their model
keys (``model.diffusion_model.*``): every temporal layer (``time_stack``, ``time_mixer``,
``time_pos_embed``) and the vector embedding ``label_emb`` (fps / motion bucket), which an image UNet
does not have. Its metadata: ``format`` = :data:`MOTION_MODULE_FORMAT`, ``source`` (the model's file),
``source_stage``, ``source_sha256`` (the source's content hash) and ``keys`` (the JSON list of its keys).

:func:`attach_temporal` fills a video model inflated from an image model with a module's (or a whole
video model's) temporal weights; the keys must be exactly those the image model did not provide.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vldm.io.safe_load import CONTENT_HASH, CheckpointError, file_metadata, key_mismatch, load_state_dict_file, \
    save_safetensors
from vldm.nn.inflate import is_temporal_key

UNET = "model.diffusion_model."
MOTION_MODULE_FORMAT = "vldm-motion-module"
VECTOR_EMBEDDING = "label_emb."  # the fps / motion-bucket embedding, absent from an image UNet


def is_video_only_key(unet_key: str) -> bool:
    """A UNet key (without ``model.diffusion_model.``) that a video UNet has and its image UNet lacks."""
    return is_temporal_key(unet_key) or unet_key.startswith(VECTOR_EMBEDDING)


def _weights_file(path: str | Path) -> Path:
    """``path`` itself, or a run directory's ``model.safetensors``; anything but safetensors is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"motion module source {path} does not exist; give a motion_module.safetensors, "
                                f"a video model's model.safetensors or its run directory")
    with path.open("rb") as fh:
        head = fh.read(9)
    if path.suffix != ".safetensors" or len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file: a motion module (or the video model it comes "
                              f"from) is read from .safetensors only (a motion_module.safetensors, a model.safetensors "
                              f"or a run directory holding one)")
    return path


def temporal_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The video-only UNet weights (keys without ``model.diffusion_model.``) of a motion module, a video
    model file or a video run directory; a module's keys must be those its metadata lists."""
    path = _weights_file(path)
    state = load_state_dict_file(path)
    meta = file_metadata(path)
    unet = {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET) and is_video_only_key(k[len(UNET):])}
    if meta.get("format") == MOTION_MODULE_FORMAT:
        listed = set(json.loads(meta.get("keys", "[]")))
        if listed != set(state) or len(unet) != len(state):
            raise CheckpointError(f"{path}: a motion module whose tensors do not match the key list in its metadata "
                                  f"(or that holds keys that are not temporal)")
    if not unet:
        raise CheckpointError(f"{path} holds no temporal layers ({UNET}*time_stack*, *time_mixer*, "
                              f"*time_pos_embed*): give a motion module or a video model (a 'video' or 'hq' stage)")
    return unet


def export_motion_module(source: str | Path, out: str | Path) -> Path:
    """Write the video-only weights of the video model at ``source`` (a file or run directory) to ``out``."""
    path = _weights_file(source)
    unet = temporal_state(path)
    meta = file_metadata(path)
    if meta.get("format") == MOTION_MODULE_FORMAT:
        raise CheckpointError(f"{path} is already a motion module; export one from a video model")
    keys = sorted(UNET + k for k in unet)
    metadata = {
        "format": MOTION_MODULE_FORMAT,
        "source": str(path),
        "source_stage": meta.get("stage", ""),
        "source_sha256": meta.get(CONTENT_HASH, ""),
        "keys": json.dumps(keys),
    }
    return save_safetensors({UNET + k: v.contiguous() for k, v in sorted(unet.items())}, out, metadata)


@torch.no_grad()
def attach_temporal(network: torch.nn.Module, temporal: dict[str, torch.Tensor], image_keys: set[str],
                    source: str) -> None:
    """Copy ``temporal`` into the video UNet ``network``: its keys must be exactly the UNet's keys that the
    image model (``image_keys``) did not fill, with the same shapes; the error names the first mismatches."""
    own = {k: tuple(v.shape) for k, v in network.state_dict().items() if k not in image_keys}
    parts = key_mismatch(own, {k: tuple(v.shape) for k, v in temporal.items()})
    if parts:
        raise CheckpointError(f"temporal_from {source} does not fit this video UNet (another architecture?): "
                              + "; ".join(parts))
    target = network.state_dict()
    for key, value in temporal.items():
        target[key].copy_(value)
