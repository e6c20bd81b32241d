"""CLIP scorer: aesthetic score (CLIP embedding + linear head) and caption-frame CLIP similarity.

Stable Video Diffusion (Blattmann et al., 2023, Sec. 3.1 and App. E.2) annotates clips with a CLIP
aesthetic score and the CLIP similarity between a clip's frames and its caption, and filters on
both. The aesthetic score follows the LAION aesthetic predictor (v1, "linear"): a linear layer
``768 -> 1`` on the **L2-normalised** CLIP image embedding.

Weights are local files only (nothing is ever downloaded): the OpenCLIP state dict (e.g.
``open_clip_pytorch_model.bin``) is loaded strictly by :func:`vldm.conditioning.open_clip_towers.
build_clip`, the head by :func:`vldm.io.safe_load.load_state_dict_file` (safetensors or
``torch.load(weights_only=True)``). Accepted head layouts, strict: ``{"weight": (1, D), "bias":
(1,)}`` (a saved ``nn.Linear``, as LAION's ``sa_0_4_vit_l_14_linear.pth``) or ``{"0.weight",
"0.bias"}`` (the same layer inside an ``nn.Sequential``). The LAION linear heads were fit on OpenAI
CLIP embeddings: pair ``sa_0_4_vit_l_14_linear.pth`` with ``model_name="ViT-L-14-quickgelu"`` and the
OpenAI ViT-L/14 weights in open_clip layout (``open_clip_pytorch_model.bin`` of
``timm/vit_large_patch14_clip_224.openai``).

Frames (analysis resolution) are centre-cropped to a square, resized (bicubic, antialiased) to the
tower's input size and normalised with the CLIP mean / std, like open_clip's eval transform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_curation.records import Clip, Score
from data_curation.scorers.text import FRAME_CHOICES, frame_indices

# Where the weights of common architectures come from (for the "file needed" line).
WEIGHT_HINTS: dict[str, str] = {
    "ViT-L-14": "open_clip_pytorch_model.bin from laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
    "ViT-L-14-quickgelu": "open_clip_pytorch_model.bin from timm/vit_large_patch14_clip_224.openai",
    "ViT-H-14": "open_clip_pytorch_model.bin from laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "ViT-B-32": "open_clip_pytorch_model.bin from laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
}
HEAD_HINT = "a linear aesthetic head, e.g. sa_0_4_vit_l_14_linear.pth from LAION-AI/aesthetic-predictor"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_linear_head(path: str | Path, embed_dim: int) -> tuple[Any, Any]:
    """``(weight (1, D), bias (1,))`` float32 tensors of a linear aesthetic head file (layouts in the module doc)."""
    from vldm.io.safe_load import load_state_dict_file

    state = load_state_dict_file(path)
    for prefix in ("", "0."):
        if set(state) == {prefix + "weight", prefix + "bias"}:
            weight, bias = state[prefix + "weight"].float(), state[prefix + "bias"].float()
            break
    else:
        raise ValueError(f"aesthetic head {path}: expected keys {{weight, bias}} or {{0.weight, 0.bias}} "
                         f"(one nn.Linear(D, 1)), found {sorted(state)}")
    if tuple(weight.shape) != (1, embed_dim) or tuple(bias.shape) != (1,):
        raise ValueError(f"aesthetic head {path}: expected weight (1, {embed_dim}) and bias (1,), got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)} (does it match the CLIP model?)")
    return weight.contiguous(), bias.contiguous()


class ClipScorer:
    """``{"aesthetic": float | None, "clip_similarity": float | None}`` per clip.

    ``model_name``: an open_clip architecture (bundled config); ``model_config``: an explicit
    ``open_clip.CLIP`` config instead (tiny random towers in tests). ``weights``: local OpenCLIP
    state dict (required). ``aesthetic_head``: local linear head file; ``None`` -> ``aesthetic`` is
    ``None``. ``caption_similarity``: cosine of the frame and ``clip.caption`` embeddings (``None``
    without a caption). Scores are means over ``frames`` (``"first"``, ``"middle"``, ``"last"``).
    ``num_threads``: torch threads while scoring (restored after), for identical numbers in any
    process. The model loads on the first ``score`` and is dropped when pickled.
    """

    name = "clip"

    def __init__(self, model_name: str = "ViT-L-14", weights: str | None = None, aesthetic_head: str | None = None,
                 caption_similarity: bool = True, frames: tuple[str, ...] = ("middle",), device: str = "cpu",
                 model_config: dict[str, Any] | None = None, num_threads: int = 1) -> None:
        frames = tuple(frames)
        if not frames or any(f not in FRAME_CHOICES for f in frames):
            raise ValueError(f"frames must be a non-empty subset of {FRAME_CHOICES}, got {frames}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.model_name = model_name
        self.weights = None if weights in (None, "") else str(weights)
        self.aesthetic_head = None if aesthetic_head in (None, "") else str(aesthetic_head)
        self.caption_similarity = bool(caption_similarity)
        self.frames = frames
        self.device = device
        self.model_config = None if model_config is None else _plain(model_config)
        self.num_threads = int(num_threads)
        self._model: Any = None
        self._head: tuple[Any, Any] | None = None
        self._tokenizer: Any = None

    # --- availability ---------------------------------------------------------------------------

    def _arch_config(self) -> dict[str, Any] | None:
        if self.model_config is not None:
            return self.model_config
        import open_clip

        return open_clip.get_model_config(self.model_name)

    @property
    def unavailable_reason(self) -> str:
        hint = WEIGHT_HINTS.get(self.model_name, "an open_clip state-dict file, e.g. open_clip_pytorch_model.bin")
        needed = f"{self.model_name} open_clip weights ({hint}); set scorers.clip.weights=PATH"
        if self.weights is None:
            return f"clip scorer skipped: no weights given; needs {needed}"
        if not Path(self.weights).is_file():
            return f"clip scorer skipped: weights file {self.weights} not found; needs {needed}"
        if self.aesthetic_head is not None and not Path(self.aesthetic_head).is_file():
            return (f"clip scorer skipped: aesthetic head {self.aesthetic_head} not found; needs {HEAD_HINT}; "
                    f"set scorers.clip.aesthetic_head=PATH (or null to score caption similarity only)")
        if self.aesthetic_head is None and not self.caption_similarity:
            return "clip scorer skipped: nothing to compute (no aesthetic_head and caption_similarity=false)"
        cfg = self._arch_config()
        if cfg is None:
            return f"clip scorer skipped: unknown open_clip architecture {self.model_name!r}"
        if "hf_tokenizer_name" in dict(cfg.get("text_cfg", {})):
            return (f"clip scorer skipped: {self.model_name} needs a Hugging Face tokenizer "
                    f"(only CLIP's BPE tokenizer is supported)")
        return ""

    @property
    def available(self) -> bool:
        return not self.unavailable_reason

    # --- model ----------------------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from open_clip.tokenizer import SimpleTokenizer

        from vldm.conditioning.open_clip_towers import build_clip

        reason = self.unavailable_reason
        if reason:
            raise RuntimeError(reason)
        model = build_clip(self.model_name if self.model_config is None else None, self.model_config, self.weights)
        model = model.to(self.device).eval().requires_grad_(False)
        embed_dim = int(self._arch_config()["embed_dim"])
        if self.aesthetic_head is not None:
            w, b = load_linear_head(self.aesthetic_head, embed_dim)
            self._head = (w.to(self.device), b.to(self.device))
        size = model.visual.image_size
        self._size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        context = int(dict(self._arch_config()["text_cfg"]).get("context_length", 77))
        self._tokenizer = SimpleTokenizer(context_length=context)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self._model = model

    def preprocess(self, frames: np.ndarray) -> Any:
        """uint8 ``(N, H, W, 3)`` RGB -> normalised float32 ``(N, 3, S, S)`` tower input."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
        if (side, side) != self._size:
            x = F.interpolate(x, size=self._size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        return (x - self._mean) / self._std

    def embed_images(self, frames: np.ndarray) -> Any:
        """L2-normalised image embeddings ``(N, D)`` of uint8 ``(N, H, W, 3)`` RGB frames."""
        if self._model is None:
            self._load()
        return self._model.encode_image(self.preprocess(frames), normalize=True)

    def embed_text(self, text: str) -> Any:
        """L2-normalised text embedding ``(1, D)``."""
        if self._model is None:
            self._load()
        tokens = self._tokenizer([text]).to(self.device)
        return self._model.encode_text(tokens, normalize=True)

    def score(self, clip: Clip) -> dict[str, Score]:
        """Mean aesthetic and mean caption similarity over the chosen frames of ``clip``."""
        import torch

        if self._model is None:
            self._load()
        idx = frame_indices(len(clip.frames), self.frames)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                img = self.embed_images(clip.frames[idx])
                aesthetic = None
                if self._head is not None:
                    w, b = self._head
                    aesthetic = float((img @ w.T + b).mean())
                similarity = None
                if self.caption_similarity and clip.caption:
                    similarity = float((img @ self.embed_text(clip.caption).T).mean().clamp(-1.0, 1.0))
        finally:
            torch.set_num_threads(old_threads)
        return {"aesthetic": aesthetic, "clip_similarity": similarity}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_model", "_head", "_tokenizer", "_mean", "_std", "_size"):
            state.pop(key, None)
        state.update(_model=None, _head=None, _tokenizer=None)
        return state

    def __repr__(self) -> str:
        return (f"ClipScorer(model_name={self.model_name!r}, weights={self.weights!r}, "
                f"aesthetic_head={self.aesthetic_head!r}, frames={self.frames})")


def _plain(cfg: Any) -> dict[str, Any]:
    """A plain nested dict from a dict or an OmegaConf DictConfig (Hydra passes the latter)."""
    if hasattr(cfg, "items"):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)) or (hasattr(cfg, "__iter__") and not isinstance(cfg, (str, bytes))):
        return [_plain(v) for v in cfg]  # type: ignore[return-value]
    return cfg
