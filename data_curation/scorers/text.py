"""Text scorer: how much of a clip's frames burned-in text covers, from an OCR text detector.

Stable Video Diffusion (Blattmann et al., 2023, Sec. 3.1 and App. E.2) runs an OCR text detector on
the first, middle and last frame of each clip and removes clips whose text area exceeds 7 % of the
frame. Here the detector is RapidOCR's PP-OCRv4 DB detector (``rapidocr_onnxruntime``, its ONNX
weights ship in the wheel), used alone: no angle classifier and no recognition, which are slow and
not needed for an area.

``text_ratio`` = area of the union of the detected boxes (the detector's expanded, "unclipped"
quadrilaterals, rasterised) / frame area, taken as the **max** over the chosen frames: a caption or
logo present in any of them flags the clip, which is the paper's "text area" intent.
``text_boxes`` = the largest number of boxes found in one of those frames.

Small frames are upscaled so the detector sees a short side of at least ``min_side`` px: the toy
generator's words are found reliably from 32 px frames once upscaled to >= 96 px (at a 32 px
detector input some are missed; 64 px misses a few single-frame checks; above ~192 px the
detector starts to call the toy's plain shapes text), hence the default 128. Its cost per clip is
in docs/benchmarks.md (``python -m bench.curate``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import cv2
import numpy as np

from data_curation.records import Clip, Score

FRAME_CHOICES: tuple[str, ...] = ("first", "middle", "last")


def frame_indices(num_frames: int, frames: tuple[str, ...]) -> list[int]:
    """Sorted distinct indices of ``frames`` (names in :data:`FRAME_CHOICES`) in a clip of ``num_frames``."""
    where = {"first": 0, "middle": num_frames // 2, "last": num_frames - 1}
    return sorted({where[f] for f in frames}) if num_frames > 0 else []


def boxes_area_ratio(boxes: list[np.ndarray] | np.ndarray | None, height: int, width: int) -> float:
    """Fraction of an ``height x width`` frame covered by the union of quadrilateral ``boxes``
    (``(4, 2)`` x, y points each), rasterised with ``cv2.fillPoly`` box by box."""
    if boxes is None or len(boxes) == 0:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    for box in boxes:  # one call per box: a single multi-contour fillPoly does not fill overlaps
        cv2.fillPoly(mask, [np.round(np.asarray(box, np.float64)).astype(np.int32).reshape(-1, 2)], 1)
    return float(mask.mean())


class TextScorer:
    """``{"text_ratio": float, "text_boxes": int}`` per clip, from RapidOCR text detection.

    ``frames``: which frames to look at (``"first"``, ``"middle"``, ``"last"``).
    ``short_side``: resize frames to this short side before detection (``None``: keep the
    analysis resolution). ``min_side``: frames whose short side is below this are upscaled to it
    inside the detector (rounded to a multiple of 32, as the network needs).
    ``box_score_threshold``: minimum mean probability inside a box (RapidOCR's ``box_thresh``).
    ``pixel_threshold``: probability-map binarisation threshold (RapidOCR's ``thresh``).
    ``unclip_ratio``: how far boxes are expanded around the text kernel (RapidOCR's default 1.6).
    ``num_threads``: ONNX Runtime intra-op threads (1: workers parallelise over clips).
    The detector loads on the first ``score`` and is dropped when pickled.
    """

    name = "text"

    def __init__(self, frames: tuple[str, ...] = ("first", "middle", "last"), short_side: int | None = None,
                 box_score_threshold: float = 0.5, pixel_threshold: float = 0.3, unclip_ratio: float = 1.6,
                 min_side: int = 128, num_threads: int = 1) -> None:
        frames = tuple(frames)
        if not frames or any(f not in FRAME_CHOICES for f in frames):
            raise ValueError(f"frames must be a non-empty subset of {FRAME_CHOICES}, got {frames}")
        if short_side is not None and short_side < 8:
            raise ValueError(f"short_side must be >= 8 px or None, got {short_side}")
        if not 0.0 < box_score_threshold < 1.0 or not 0.0 < pixel_threshold < 1.0:
            raise ValueError("box_score_threshold and pixel_threshold must lie in (0, 1)")
        if min_side < 32 or num_threads < 1 or unclip_ratio <= 0:
            raise ValueError("need min_side >= 32, num_threads >= 1 and unclip_ratio > 0")
        self.frames = frames
        self.short_side = short_side
        self.box_score_threshold = float(box_score_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.unclip_ratio = float(unclip_ratio)
        self.min_side = int(min_side)
        self.num_threads = int(num_threads)
        self._detector: Any = None
        self._reason: str | None = None

    @property
    def available(self) -> bool:
        return not self.unavailable_reason

    @property
    def unavailable_reason(self) -> str:
        if self._reason is None:
            missing = importlib.util.find_spec("rapidocr_onnxruntime") is None
            self._reason = "text scorer skipped: rapidocr-onnxruntime is not installed" if missing else ""
        return self._reason

    def _load(self) -> Any:
        """RapidOCR's DB text detector alone, configured from its bundled config.yaml."""
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml
        from rapidocr_onnxruntime.utils.parse_parameters import update_model_path

        det = dict(update_model_path(read_yaml(DEFAULT_CFG_PATH))["Det"])
        det.update(intra_op_num_threads=self.num_threads, inter_op_num_threads=1, use_cuda=False, use_dml=False,
                   limit_type="min", limit_side_len=self.min_side, thresh=self.pixel_threshold,
                   box_thresh=self.box_score_threshold, unclip_ratio=self.unclip_ratio)
        return TextDetector(det)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 frame -> contiguous BGR at ``short_side`` (the detector's channel order)."""
        h, w = frame.shape[:2]
        if self.short_side is not None and min(h, w) != self.short_side:
            s = self.short_side / min(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        return np.ascontiguousarray(frame[..., ::-1])

    def detect(self, frame: np.ndarray) -> tuple[float, int]:
        """``(text area ratio, number of boxes)`` of one uint8 ``(H, W, 3)`` RGB frame."""
        if self._detector is None:
            if not self.available:
                raise RuntimeError(self.unavailable_reason)
            self._detector = self._load()
        img = self._prepare(frame)
        boxes, _ = self._detector(img)
        n = 0 if boxes is None else len(boxes)
        return boxes_area_ratio(boxes, img.shape[0], img.shape[1]), n

    def score(self, clip: Clip) -> dict[str, Score]:
        """Max text ratio and box count over the chosen frames of ``clip``."""
        ratio, count = 0.0, 0
        for i in frame_indices(len(clip.frames), self.frames):
            r, n = self.detect(clip.frames[i])
            ratio, count = max(ratio, r), max(count, n)
        return {"text_ratio": float(ratio), "text_boxes": int(count)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_detector"] = None  # ONNX sessions do not pickle; reloaded lazily in the worker
        return state

    def __repr__(self) -> str:
        return (f"TextScorer(frames={self.frames}, short_side={self.short_side}, min_side={self.min_side}, "
                f"box_score_threshold={self.box_score_threshold})")
