"""Caption stage: keep the captions that came with the data, ask a local captioner for the rest.

Stable Video Diffusion (Blattmann et al., 2023, Sec. 3.1 and App. E.2) captions each clip with an
image captioner (CoCa) on the middle frame and a video captioner (V-BLIP), then an LLM summary.
Here one :class:`Captioner` is asked on the middle frame of clips without a data caption; any
local model behind the protocol works. :class:`TransformersCaptioner` runs a local Hugging Face
image captioning model (e.g. a BLIP checkpoint directory) with no network access.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from data_curation.records import Clip, Score


@runtime_checkable
class Captioner(Protocol):
    """Anything that captions frames: ``caption(frames)`` with uint8 ``(T, H, W, 3)`` RGB -> str.

    Optional: ``available`` / ``unavailable_reason`` properties (a captioner without them is
    taken as available).
    """

    def caption(self, frames: np.ndarray) -> str: ...


class CaptionScorer:
    """``{"caption": str | None, "caption_source": "data" | "model" | None}`` per clip.

    Keeps ``clip.caption`` when present (``caption_source="data"``) unless ``overwrite``;
    otherwise, with a ``captioner``, asks it on the middle frame (passed as a ``(1, H, W, 3)``
    stack; ``caption_source="model"``). No caption and no captioner (or an empty answer): both
    ``None``. Unavailable only when the captioner is.
    """

    name = "captions"

    def __init__(self, captioner: Captioner | None = None, overwrite: bool = False) -> None:
        if captioner is not None and not callable(getattr(captioner, "caption", None)):
            raise TypeError(f"captioner must have a caption(frames) method, got {type(captioner).__name__}")
        self.captioner = captioner
        self.overwrite = bool(overwrite)

    @property
    def available(self) -> bool:
        return self.captioner is None or bool(getattr(self.captioner, "available", True))

    @property
    def unavailable_reason(self) -> str:
        if self.available:
            return ""
        return str(getattr(self.captioner, "unavailable_reason", "") or f"captioner {self.captioner!r} is unavailable")

    def score(self, clip: Clip) -> dict[str, Score]:
        if clip.caption and not self.overwrite:
            return {"caption": clip.caption, "caption_source": "data"}
        if self.captioner is None or len(clip.frames) == 0:
            return {"caption": clip.caption or None, "caption_source": "data" if clip.caption else None}
        mid = len(clip.frames) // 2
        text = " ".join(str(self.captioner.caption(clip.frames[mid:mid + 1])).split())
        if not text:
            return {"caption": clip.caption or None, "caption_source": "data" if clip.caption else None}
        return {"caption": text, "caption_source": "model"}

    def __repr__(self) -> str:
        return f"CaptionScorer(captioner={self.captioner!r}, overwrite={self.overwrite})"


class TransformersCaptioner:
    """A local Hugging Face image captioning model (``path``: a saved model directory).

    Uses transformers' ``image-to-text`` pipeline (transformers 4.x) or, where that task is gone
    (5.x), ``image-text-to-text`` with no prompt; always ``local_files_only=True``, greedy decoding
    with ``max_new_tokens``. transformers is a dev dependency: imported on first use only. The
    pipeline loads on the first ``caption`` and is dropped when pickled.
    """

    def __init__(self, path: str, max_new_tokens: int = 30, device: str = "cpu") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.path = str(path)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._pipe: Any = None
        self._task: str | None = None

    @property
    def unavailable_reason(self) -> str:
        p = Path(self.path)
        if not p.is_dir() or not (p / "config.json").is_file():
            return (f"captioner skipped: no local captioning model at {self.path} (a saved Hugging Face model "
                    f"directory with config.json, e.g. Salesforce/blip-image-captioning-base); "
                    f"set scorers.captions.captioner.path=PATH")
        if importlib.util.find_spec("transformers") is None:
            return "captioner skipped: transformers is not installed (pip install transformers)"
        return ""

    @property
    def available(self) -> bool:
        return not self.unavailable_reason

    def _load(self) -> None:
        reason = self.unavailable_reason
        if reason:
            raise RuntimeError(reason)
        from transformers import pipeline
        from transformers.pipelines import get_supported_tasks

        self._task = "image-to-text" if "image-to-text" in get_supported_tasks() else "image-text-to-text"
        self._pipe = pipeline(self._task, model=self.path, device=self.device,
                              model_kwargs={"local_files_only": True})

    def caption(self, frames: np.ndarray) -> str:
        """Caption of the middle frame of uint8 ``(T, H, W, 3)`` RGB ``frames``."""
        from PIL import Image

        if self._pipe is None:
            self._load()
        image = Image.fromarray(np.ascontiguousarray(frames[len(frames) // 2]))
        kwargs: dict[str, Any] = {"generate_kwargs": {"max_new_tokens": self.max_new_tokens, "do_sample": False}}
        out = self._pipe(image, **kwargs) if self._task == "image-to-text" else self._pipe(images=image, **kwargs)
        first = out[0] if isinstance(out, list) and out else out
        if isinstance(first, list) and first:
            first = first[0]
        return str(first.get("generated_text", "")).strip() if isinstance(first, dict) else str(first).strip()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pipe"] = None
        return state

    def __repr__(self) -> str:
        return f"TransformersCaptioner(path={self.path!r}, max_new_tokens={self.max_new_tokens})"
