"""CLIP metrics for videos with open_clip (Ilharco et al.; Radford et al., 2021).

- ``clip_score``: CLIPScore (Hessel et al., 2021) per frame, ``w * max(cos(image, text), 0)``,
  averaged over frames. Hessel et al. use ``w = 2.5``; video generation papers (e.g. CLIPSIM in
  Wu et al., 2021 / Make-A-Video) report ``100 * cos``; here ``w = 100`` (:data:`CLIP_SCORE_WEIGHT`).
- ``temporal_consistency``: mean cosine similarity of the CLIP image embeddings of adjacent
  frames (1 for a static video), the "CLIP temporal consistency" of e.g. Esser et al. (2023).

Frames are preprocessed as open_clip's eval transform: bicubic resize (antialiased) of the short
side to the tower's input size, centre crop, CLIP mean/std normalisation. Weights come only from
a local file (safe-loaded by :func:`vldm.conditioning.open_clip_towers.build_clip`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from vldm.conditioning.open_clip_towers import CLIP_MEAN, CLIP_STD, build_clip

CLIP_SCORE_WEIGHT = 100.0
CLIP_WEIGHTS_FILE = "open_clip_pytorch_model.bin"
CLIP_WEIGHTS_SOURCE = "open_clip ViT-B-32 laion2b_s34b_b79k, https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


class ClipVideoMetrics:
    """CLIP score and CLIP temporal consistency of uint8 videos ``(n, t, h, w, 3)``.

    ``model_name``: an open_clip architecture; ``weights``: its local checkpoint (required unless
    ``model_config`` is given: a tiny random tower for tests, meaningless for evaluation).
    ``config_key`` only names the setting in error messages.
    """

    def __init__(self, model_name: str = "ViT-B-32", weights: str | None = None, model_config: dict | None = None,
                 device: str = "cpu", batch_size: int = 64, init_seed: int = 0,
                 config_key: str = "metrics.clip.weights") -> None:
        if model_config is None:
            if weights is None:
                raise FileNotFoundError(f"CLIP metrics need local {model_name} weights: set {config_key} to the "
                                        f"file {CLIP_WEIGHTS_FILE} of {CLIP_WEIGHTS_SOURCE}")
            if not Path(weights).is_file():
                raise FileNotFoundError(f"CLIP weights not found: {weights} (expected {CLIP_WEIGHTS_FILE} of "
                                        f"{CLIP_WEIGHTS_SOURCE}); download it and set {config_key}")
        self.model = build_clip(None if model_config is not None else model_name, model_config, weights,
                                init_seed).to(device).eval()
        self.model.requires_grad_(False)
        self.name = f"open_clip-{model_name}" if model_config is None else "open_clip-custom"
        self.device = device
        self.batch_size = int(batch_size)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.model.context_length)
        self._mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(b, h, w, 3)`` -> normalised float ``(b, 3, s, s)``: short side to ``s``, centre crop."""
        x = frames.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        s = self.image_size
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[:, :, top:top + s, left:left + s]
        return (x - self._mean) / self._std

    @torch.no_grad()
    def image_embeddings(self, videos: np.ndarray) -> np.ndarray:
        """uint8 ``(n, t, h, w, 3)`` -> unit-norm float64 ``(n, t, d)``."""
        videos = _check(videos)
        n, t = videos.shape[:2]
        flat = torch.from_numpy(np.ascontiguousarray(videos.reshape(n * t, *videos.shape[2:])))
        outs = [self.model.encode_image(self.preprocess(flat[i:i + self.batch_size])).double()
                for i in range(0, n * t, self.batch_size)]
        emb = F.normalize(torch.cat(outs), dim=-1)
        return emb.cpu().numpy().reshape(n, t, -1)

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> unit-norm float64 ``(n, d)`` (truncated to the context length)."""
        tokens = self.tokenizer(list(captions)).to(self.device)
        outs = [self.model.encode_text(tokens[i:i + self.batch_size]).double()
                for i in range(0, len(tokens), self.batch_size)]
        return F.normalize(torch.cat(outs), dim=-1).cpu().numpy()

    def clip_score(self, videos: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """``(n,)``: ``100 * mean over frames of max(cos(frame, caption), 0)``."""
        if len(captions) != len(videos):
            raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
        img = self.image_embeddings(videos)
        txt = self.text_embeddings(captions)
        cos = np.einsum("ntd,nd->nt", img, txt)
        return CLIP_SCORE_WEIGHT * np.maximum(cos, 0.0).mean(axis=1)

    def temporal_consistency(self, videos: np.ndarray) -> np.ndarray:
        """``(n,)``: mean cosine similarity of adjacent frames' image embeddings."""
        img = self.image_embeddings(videos)
        if img.shape[1] < 2:
            raise ValueError(f"temporal consistency needs at least 2 frames, got {img.shape[1]}")
        return np.einsum("ntd,ntd->nt", img[:, 1:], img[:, :-1]).mean(axis=1)


def _check(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos (n, t, h, w, 3), got shape {videos.shape}")
    if videos.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels 0..255, got {videos.dtype}")
    return videos
