"""Tell which known model a checkpoint holds, from its key names and shapes alone.

Used to turn a key mismatch into advice ("this file is SD 2.1 in the LDM layout: use model=sd21")
and a missing file into where it is published. The characteristic keys are those of the released
files: the LDM layout of Stability-AI/stablediffusion (``cond_stage_model.model.*`` plus the DDPM
schedule buffers), the SGM layout of Stability-AI/generative-models (``conditioner.embedders.*``),
SVD's temporal VAE decoder (``decoder.conv_out.time_mix_conv``) and temporal UNet layers
(``time_stack``), and the diffusers / open_clip layouts that are not loadable here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

UNET = "model.diffusion_model."
RELEASED_MODEL_CHANNELS = 320

# Released file name -> Hugging Face repository that publishes it.
PUBLISHED: dict[str, str] = {
    "svd.safetensors": "stabilityai/stable-video-diffusion-img2vid",
    "svd_image_decoder.safetensors": "stabilityai/stable-video-diffusion-img2vid",
    "svd_xt.safetensors": "stabilityai/stable-video-diffusion-img2vid-xt",
    "svd_xt_image_decoder.safetensors": "stabilityai/stable-video-diffusion-img2vid-xt",
    "svd_xt_1_1.safetensors": "stabilityai/stable-video-diffusion-img2vid-xt-1-1",
    "v2-1_768-ema-pruned.safetensors": "stabilityai/stable-diffusion-2-1",
    "v2-1_768-ema-pruned.ckpt": "stabilityai/stable-diffusion-2-1",
    "v2-1_512-ema-pruned.safetensors": "stabilityai/stable-diffusion-2-1-base",
    "v2-1_512-ema-pruned.ckpt": "stabilityai/stable-diffusion-2-1-base",
    "open_clip_pytorch_model.bin": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "open_clip_model.safetensors": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}


def published_source(filename: str) -> str | None:
    """``"<file> is published in the Hugging Face repository <repo>"`` for a known file name."""
    repo = PUBLISHED.get(filename)
    return None if repo is None else f"{filename} is published in the Hugging Face repository {repo}"


def missing_file_message(path: str, what: str = "checkpoint") -> str:
    """``"<what> not found: <path>"``, plus where a released file of that name is published."""
    name = Path(path).name
    source = published_source(name)
    hint = f"; {source} (vldm never downloads: fetch it yourself and give its local path)" if source else ""
    return f"{what} not found: {path}{hint}"


@dataclass(frozen=True)
class Identity:
    """What a key set looks like, and how to load it (``advice``; empty when it is not loadable here)."""

    description: str
    advice: str = ""

    def __str__(self) -> str:
        return f"{self.description}{': ' + self.advice if self.advice else ''}"


def _has(keys: Sequence[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _model_channels(shapes: Mapping[str, Sequence[int]], prefix: str = UNET) -> int | None:
    shape = shapes.get(f"{prefix}input_blocks.0.0.weight")
    return int(shape[0]) if shape else None


def _context_dim(shapes: Mapping[str, Sequence[int]]) -> int | None:
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith("transformer_blocks.0.attn2.to_k.weight"):
            return int(shape[1])
    return None


def identify(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> Identity | None:
    """The known model a ``{key: shape}`` set belongs to, or None when it is not recognised."""
    keys = list(shapes)
    metadata = metadata or {}
    if metadata.get("format") == "svd" and "vldm_version" in metadata:
        return Identity("a vldm model exported in the SVD layout (vldm.checkpoints.svd_export)",
                        "sample it with sample.py checkpoint=<this file>, or load it with "
                        "vldm.checkpoints.svd_export.load_exported")
    if _has(keys, "down_blocks.") or _has(keys, "time_embedding.linear_1"):
        return Identity("a diffusers-format model file (diffusion_pytorch_model.*)",
                        "vldm reads the single-file SGM / LDM checkpoints (e.g. svd_xt.safetensors), "
                        "not diffusers folders")
    if _has(keys, "visual.") and _has(keys, "transformer.resblocks.") and not _has(keys, UNET):
        return Identity("an OpenCLIP model file (e.g. open_clip_pytorch_model.bin)",
                        "give it as the text / image tower's weights, not as the model checkpoint")
    if _has(keys, "encoder.conv_in.") and _has(keys, "decoder.conv_in.") and not _has(keys, UNET) \
            and not _has(keys, "first_stage_model."):
        return Identity("an autoencoder on its own (vldm stage=autoencoder export or a bare SD VAE)",
                        "give it as model.first_stage_weights, not as the model checkpoint")
    if not _has(keys, UNET):
        return None
    mc = _model_channels(shapes)
    ctx = _context_dim(shapes)
    video = any(".time_stack." in k for k in keys if k.startswith(UNET))
    official = mc == RELEASED_MODEL_CHANNELS and "stage" not in metadata
    vldm_run = "sample it through its vldm run directory (checkpoint=RUN_DIR, no model=...)"
    if video:
        temporal_vae = "first_stage_model.decoder.conv_out.time_mix_conv.weight" in shapes
        if temporal_vae:
            name = "Stable Video Diffusion with the temporal VAE decoder (svd / svd_xt / svd_xt_1_1: one architecture)"
            advice = "use model=svd_xt (model=svd for svd.safetensors, model=svd_xt_1_1 for svd_xt_1_1.safetensors)"
        else:
            name = "Stable Video Diffusion with the per-frame image decoder (svd_image_decoder / svd_xt_image_decoder)"
            advice = "use model=svd_xt_image_decoder (or model=svd_image_decoder)"
        if official:
            return Identity(name, advice)
        return Identity(f"an image-to-video model of the SVD architecture at other sizes (model_channels={mc}, "
                        f"context_dim={ctx}; e.g. a vldm-trained run)", vldm_run)
    if _has(keys, "cond_stage_model.transformer.text_model."):
        return Identity("Stable Diffusion 1.x (CLIP ViT-L text encoder, LDM layout)", "not supported by vldm")
    if _has(keys, "cond_stage_model.model.transformer.") or "alphas_cumprod" in shapes:
        if official and ctx == 1024:
            return Identity("Stable Diffusion 2.x in the LDM layout (v2-1_768-ema-pruned / v2-1_512-ema-pruned)",
                            "use model=sd21 (checkpoint_layout: ldm; 768-v is v-prediction, 512-base is epsilon)")
        return Identity(f"a text-to-image model in the LDM layout of SD 2.x at other sizes (model_channels={mc}, "
                        f"context_dim={ctx})",
                        "load it with an sd21-style config at its sizes (checkpoint_layout: ldm)")
    if _has(keys, "conditioner.embedders.0.model.transformer."):
        if official and ctx == 1024:
            return Identity("Stable Diffusion 2.x in the SGM layout", "use model=sd21 model.checkpoint_layout=sgm")
        return Identity(f"a text-to-image model of the SD 2.x architecture at other sizes (model_channels={mc}, "
                        f"context_dim={ctx}; e.g. a vldm stage-1 run)",
                        "a video stage inflates it (stage.init_from); sample.py makes videos, not images")
    return Identity(f"a latent diffusion UNet checkpoint (model_channels={mc}, context_dim={ctx})")
