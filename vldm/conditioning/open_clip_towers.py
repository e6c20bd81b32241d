"""Frozen OpenCLIP towers used as conditioning (Ilharco et al., OpenCLIP; Radford et al., 2021).

SD 2.x conditions on the penultimate layer of the ViT-H-14 text tower (``FrozenOpenCLIPEmbedder``
in LDM/SGM); SVD conditions on the projected ViT-H-14 image embedding
(``FrozenOpenCLIPImageEmbedder``). The architecture comes from open_clip's bundled configs (or
explicit ``model_cfg`` for tiny random towers); weights come only from a local file.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vldm.checkpoints.safe_load import load_state_dict_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(arch: str | None = None, model_cfg: dict | None = None, weights: str | None = None,
               init_seed: int = 0) -> open_clip.CLIP:
    """An OpenCLIP model from a bundled architecture name or an explicit config.

    Without ``weights`` the tower is random but reproducible (``init_seed``): fine for toy runs
    and tests, meaningless otherwise. With ``weights`` (a local safetensors / ``.bin`` / ``.pt``
    file) every key must match.
    """
    if model_cfg is None:
        if arch is None:
            raise ValueError("give an open_clip architecture name (e.g. ViT-H-14) or a model_cfg")
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
    cfg = {k: dict(v) if isinstance(v, dict) or hasattr(v, "items") else v for k, v in dict(model_cfg).items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = open_clip.CLIP(**cfg)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"OpenCLIP weights not found: {path} (a local open_clip "
                                    f"{arch or 'model'} checkpoint, e.g. open_clip_pytorch_model.bin)")
        model.load_state_dict(load_state_dict_file(path), strict=True)
    return model


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class OpenCLIPTextEmbedder(nn.Module):
    """Token features from the text tower's ``layer`` ("last" or "penultimate"), after ``ln_final``.

    Output: ``(b, context_length, width)`` — the cross-attention context of SD 2.x.
    """

    def __init__(self, arch: str | None = None, model_cfg: dict | None = None, weights: str | None = None,
                 layer: str = "penultimate", init_seed: int = 0) -> None:
        super().__init__()
        model = build_clip(arch, model_cfg, weights, init_seed)
        del model.visual
        self.model = model
        self.layer_skip = {"last": 0, "penultimate": 1}[layer]
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
        _freeze(self)

    def train(self, mode: bool = True) -> "OpenCLIPTextEmbedder":
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def forward(self, text: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(text)).to(self.model.token_embedding.weight.device)
        x = self.model.token_embedding(tokens) + self.model.positional_embedding
        blocks = self.model.transformer.resblocks
        if not self.model.transformer.batch_first:
            x = x.transpose(0, 1)
        for block in blocks[: len(blocks) - self.layer_skip]:
            x = block(x, attn_mask=self.model.attn_mask)
        if not self.model.transformer.batch_first:
            x = x.transpose(0, 1)
        return self.model.ln_final(x)


class OpenCLIPImageEmbedder(nn.Module):
    """Projected image embedding as one cross-attention token, ``(b, 1, embed_dim)``.

    Input in [-1, 1]; resized (bicubic, antialiased) to the tower's size and CLIP-normalised.
    """

    def __init__(self, arch: str | None = None, model_cfg: dict | None = None, weights: str | None = None,
                 init_seed: int = 0) -> None:
        super().__init__()
        model = build_clip(arch, model_cfg, weights, init_seed)
        del model.transformer
        self.model = model
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        _freeze(self)

    def train(self, mode: bool = True) -> "OpenCLIPImageEmbedder":
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image.float(), size=self.image_size, mode="bicubic", align_corners=True, antialias=True)
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        dtype = next(self.model.visual.parameters()).dtype
        return self.model.visual(x.to(dtype))[:, None, :].to(image.dtype)
