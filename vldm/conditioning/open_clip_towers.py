"""Frozen OpenCLIP towers used as conditioning (Ilharco et al., OpenCLIP; Radford et al., 2021).

SD 2.x conditions on the penultimate layer of the ViT-H-14 text tower (``FrozenOpenCLIPEmbedder``
in LDM/SGM); SVD conditions on the projected ViT-H-14 image embedding
(``FrozenOpenCLIPImageEmbedder``). The architecture comes from open_clip's bundled configs (or
explicit ``model_cfg`` for tiny random towers); weights come only from a local file.

Neither tower keeps a non-persistent buffer (open_clip's ``attn_mask`` is dropped, the causal mask
and the CLIP mean / std are made in ``forward``): models are built on the ``meta`` device and
filled with ``load_state_dict(assign=True)``, which never reaches such buffers.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vldm.io.safe_load import load_state_dict_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(arch: str | None = None, model_cfg: dict | None = None, weights: str | None = None,
               init_seed: int = 0) -> open_clip.CLIP:
    """An OpenCLIP model from a bundled architecture name or an explicit config.

    Without ``weights`` the tower is random but reproducible (``init_seed``): fine for toy runs
    and tests, meaningless otherwise. With ``weights`` (a local safetensors / ``.bin`` / ``.pt``
    file) every key must match; a tower built on the meta device is left for a checkpoint to fill.
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
    if weights is None:
        return model
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"OpenCLIP weights not found: {path} (a local open_clip "
                                f"{arch or 'model'} checkpoint, e.g. open_clip_pytorch_model.bin)")
    if not model.logit_scale.is_meta:  # a meta-device skeleton is filled by the checkpoint being loaded
        model.load_state_dict(load_state_dict_file(path), strict=True)
    return model


def causal_mask(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``(n, n)`` mask: ``-inf`` above the diagonal (what open_clip keeps as ``attn_mask``)."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)


def _gaussian_taps(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    taps = torch.exp(-offsets.pow(2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _blur_1d(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """Convolve ``(b, c, h, w)`` with ``taps`` along ``dim`` (-1: width, -2: height), reflect padding."""
    b, c, h, w = x.shape
    k = taps.numel()
    pad = (k // 2, k - 1 - k // 2)
    kernel = taps.to(x.dtype).view(1, 1, 1, k) if dim == -1 else taps.to(x.dtype).view(1, 1, k, 1)
    padded = F.pad(x.reshape(b * c, 1, h, w), pad + (0, 0) if dim == -1 else (0, 0) + pad, mode="reflect")
    return F.conv2d(padded, kernel).reshape(b, c, h, w)


def antialiased_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (``align_corners=True``) preceded, when shrinking, by a Gaussian blur.

    The preprocessing of SGM's ``FrozenOpenCLIPImageEmbedder`` (``kornia.geometry.resize`` with
    ``antialias=True``): per axis ``sigma = max((factor - 1) / 2, 0.001)`` and an odd kernel of
    ``max(int(4 * sigma), 3)`` taps (skimage's sigma, two sigmas each side). diffusers' SVD pipeline
    imitates it (``_resize_with_antialiasing``); the tests hold the two within 1e-5.
    """
    h, w = x.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return x
    factors = (h / size[0], w / size[1])
    if max(factors) > 1.0:
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        taps = [max(int(4.0 * s), 3) for s in sigmas]
        taps = [t + 1 if t % 2 == 0 else t for t in taps]
        x = _blur_1d(x, _gaussian_taps(taps[1], sigmas[1], x.device), dim=-1)
        x = _blur_1d(x, _gaussian_taps(taps[0], sigmas[0], x.device), dim=-2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


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
        del model.attn_mask  # a non-persistent buffer; the mask is made in forward
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
        mask = causal_mask(tokens.shape[1], x.device, x.dtype)
        for block in blocks[: len(blocks) - self.layer_skip]:
            x = block(x, attn_mask=mask)
        if not self.model.transformer.batch_first:
            x = x.transpose(0, 1)
        return self.model.ln_final(x)


class CLIPHolder(nn.Module):
    """Holds a CLIP as ``model``: SGM wraps its ``FrozenOpenCLIPImageEmbedder`` (``.model``) in a
    ``FrozenOpenCLIPImagePredictionEmbedder`` (``.open_clip``), hence ``open_clip.model.*``."""

    def __init__(self, model: open_clip.CLIP) -> None:
        super().__init__()
        self.model = model


class OpenCLIPImageEmbedder(nn.Module):
    """Projected image embedding as one cross-attention token, ``(b, 1, embed_dim)``.

    Input in [-1, 1]; resized to the tower's size with :func:`antialiased_resize` and
    CLIP-normalised, as SGM does. Parameters are ``open_clip.model.*`` (the SVD layout): the
    image tower plus the text tower's embeddings, ``ln_final``, ``text_projection`` and
    ``logit_scale`` (only the text ``transformer`` is dropped, as in SGM).
    """

    def __init__(self, arch: str | None = None, model_cfg: dict | None = None, weights: str | None = None,
                 init_seed: int = 0) -> None:
        super().__init__()
        model = build_clip(arch, model_cfg, weights, init_seed)
        del model.transformer
        del model.attn_mask  # a non-persistent buffer the image tower never uses
        self.open_clip = CLIPHolder(model)
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        _freeze(self)

    @property
    def model(self) -> open_clip.CLIP:
        return self.open_clip.model

    def train(self, mode: bool = True) -> "OpenCLIPImageEmbedder":
        return super().train(False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` in [-1, 1] -> the tower's input (float32)."""
        x = antialiased_resize(image.float(), self.image_size)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x + 1.0) / 2.0 - mean) / std

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        dtype = next(visual.parameters()).dtype
        return visual(self.preprocess(image).to(dtype))[:, None, :].to(image.dtype)
