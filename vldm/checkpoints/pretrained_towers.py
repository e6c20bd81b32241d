"""Pretrained text tower for Stable Diffusion 2.x configs, with a clear rule for where its weights come from.

SD 2.x conditions on OpenCLIP ViT-H-14's text tower (penultimate layer; LDM/SGM
``FrozenOpenCLIPEmbedder``). Its weights live in two places: the SD 2.1 checkpoint itself
(``cond_stage_model.model.*``) and the OpenCLIP release (``open_clip_pytorch_model.bin`` of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Precedence:

- built to receive a full checkpoint (:func:`vldm.checkpoints.official.load_pretrained` builds it on
  the ``meta`` device): the checkpoint's tower is used; a separate OpenCLIP file, when given, is only
  checked to agree with it (:class:`~vldm.checkpoints.official.Companion`);
- built normally (training from scratch around a pretrained text encoder): the OpenCLIP file is
  required (unless ``require_weights=False``, for tiny test towers), and missing it is an error
  that names the file and where it is published.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vldm.checkpoints.official import Companion
from vldm.conditioning.open_clip_towers import OpenCLIPTextEmbedder
from vldm.io.identify import missing_file_message

OPENCLIP_H14 = "open_clip_pytorch_model.bin"
OPENCLIP_H14_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def sd_text_embedder(arch: str | None = "ViT-H-14", model_cfg: dict | None = None, weights: str | None = None,
                     layer: str = "penultimate", require_weights: bool = True) -> OpenCLIPTextEmbedder:
    """The SD 2.x text embedder, its weights resolved by the precedence in the module docstring."""
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(missing_file_message(str(weights), what="OpenCLIP text-tower weights"))
    skeleton = torch.get_default_device().type == "meta"  # built for a full checkpoint, which holds the tower
    if weights is None and require_weights and not skeleton:
        raise FileNotFoundError(
            f"the SD 2.x text encoder needs OpenCLIP {arch or 'ViT-H-14'} weights: set VLDM_OPENCLIP_H14 (or "
            f"model.clip_weights) to a local {OPENCLIP_H14} (published in the Hugging Face repository "
            f"{OPENCLIP_H14_REPO}); loading a full SD 2.1 checkpoint (model=sd21 checkpoint="
            f"v2-1_768-ema-pruned.safetensors) needs no separate file: it holds the text tower")
    embedder = OpenCLIPTextEmbedder(arch=arch, model_cfg=model_cfg, weights=weights, layer=layer)
    if skeleton and weights is not None:
        embedder.companion_weights = Companion(str(weights), prefix="model.")
    return embedder
