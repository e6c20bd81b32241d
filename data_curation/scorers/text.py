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

Subtitles: at the 128 px analysis size subtitle glyphs (4-7 % of the frame height) shrink to
5-9 px, below what the detector finds. The scorer therefore asks the pipeline for **stills**
(:attr:`TextScorer.stills`: short side ``stills_short_side``, default 224, never upscaled past the
source; one every ``stills_every_s`` s) and detects on the stills nearest to the chosen frames;
224 px is the smallest short side finding DejaVu subtitles from 4 % glyph height up on textured,
moving footage in (nearly) every frame (``python -m bench.text_sizes``; the curve is in
docs/curation.md). ``has_subtitles``: a text line (a box ``subtitle_min_aspect`` times wider than
high) centred in the lower part of the frame (below ``subtitle_top`` of its height) in at least
``subtitle_min_share`` of the looked-at frames and in at least 2 of them, so a title at the top or
text flashed in one frame is not a subtitle. A clip without stills is scored on its analysis frames.

Small frames are upscaled so the detector sees a short side of at least ``min_side`` px: the toy
generator's words are found reliably from 32 px frames once upscaled to >= 96 px (at a 32 px
detector input some are missed; 64 px misses a few single-frame checks; above ~192 px the
detector starts to call the toy's plain shapes text), hence the default 128. Its cost per clip is
in docs/benchmarks.md (``python -m bench.curate``, ``python -m bench.text_sizes``).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import cv2
import numpy as np

from data_curation.records import Clip, Score, StillsRequest

FRAME_CHOICES: tuple[str, ...] = ("first", "middle", "last")
STILLS_SHORT_SIDE = 224  # the smallest short side finding subtitles from 4 % glyph height up (bench.text_sizes)


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


def nearest_stills(stills: dict[int, np.ndarray], indices: list[int]) -> list[int]:
    """Distinct keys of ``stills`` nearest to each of ``indices`` (ties: the earlier key), in order."""
    keys = sorted(stills)
    chosen = [min(keys, key=lambda k: (abs(k - i), k)) for i in indices] if keys else []
    return list(dict.fromkeys(chosen))


def is_subtitle_line(box: np.ndarray, height: int, top: float, min_aspect: float) -> bool:
    """True when quadrilateral ``box`` is a text line (width >= ``min_aspect`` x its height) whose
    centre lies below ``top`` x ``height`` (the lower part of the frame)."""
    pts = np.asarray(box, np.float64).reshape(-1, 2)
    w, h = np.ptp(pts[:, 0]), max(float(np.ptp(pts[:, 1])), 1e-6)
    return bool(w >= min_aspect * h and pts[:, 1].mean() >= top * height)


def _rgb_still(frame: np.ndarray, index: int) -> np.ndarray:
    """``frame`` when it is a uint8 ``(H, W, 3)`` RGB image, else a ValueError naming the still."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"Clip.stills[{index}] must be a uint8 (H, W, 3) RGB frame, got {frame.dtype} "
                         f"{frame.shape}: fill stills like the analysis frames")
    return frame


def subtitles_persist(line_frames: int, frames: int, min_share: float) -> bool:
    """True when ``line_frames`` of ``frames`` looked-at frames hold a subtitle line: at least
    ``min_share`` of them and at least 2."""
    return line_frames >= max(2, math.ceil(min_share * frames - 1e-9))


class TextScorer:
    """``{"text_ratio": float, "text_boxes": int, "has_subtitles": bool}`` per clip, from RapidOCR
    text detection.

    ``frames``: which frames to look at (``"first"``, ``"middle"``, ``"last"``); with stills, the
    stills nearest to them. ``stills_short_side``: ask the pipeline for stills at this short side
    (:attr:`stills`; ``None``: no stills, the analysis frames are used), one every
    ``stills_every_s`` seconds. ``short_side``: resize analysis frames to this short side before
    detection (``None``: keep the analysis resolution; stills are used at their own size).
    ``has_subtitles``: at least ``subtitle_min_share`` of the looked-at frames, and at least 2 of
    them, hold a text line (a box ``subtitle_min_aspect`` times wider than high) centred below
    ``subtitle_top`` of the frame height. ``min_side``: frames whose short side is below this are upscaled to it
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
                 min_side: int = 128, num_threads: int = 1, stills_short_side: int | None = STILLS_SHORT_SIDE,
                 stills_every_s: float = 0.5, subtitle_min_share: float = 0.5, subtitle_top: float = 0.6,
                 subtitle_min_aspect: float = 3.0) -> None:
        frames = tuple(frames)
        if not frames or any(f not in FRAME_CHOICES for f in frames):
            raise ValueError(f"frames must be a non-empty subset of {FRAME_CHOICES}, got {frames}")
        if short_side is not None and short_side < 8:
            raise ValueError(f"short_side must be >= 8 px or None, got {short_side}")
        if not 0.0 < box_score_threshold < 1.0 or not 0.0 < pixel_threshold < 1.0:
            raise ValueError("box_score_threshold and pixel_threshold must lie in (0, 1)")
        if min_side < 32 or num_threads < 1 or unclip_ratio <= 0:
            raise ValueError("need min_side >= 32, num_threads >= 1 and unclip_ratio > 0")
        if stills_short_side is not None and stills_short_side < 32:
            raise ValueError(f"stills_short_side must be >= 32 px or None, got {stills_short_side}")
        if not stills_every_s > 0:
            raise ValueError(f"stills_every_s must be > 0 seconds, got {stills_every_s}")
        if not 0.0 < subtitle_min_share <= 1.0 or not 0.0 <= subtitle_top < 1.0 or not subtitle_min_aspect > 0:
            raise ValueError("need 0 < subtitle_min_share <= 1, 0 <= subtitle_top < 1 and subtitle_min_aspect > 0")
        self.frames = frames
        self.stills_short_side = None if stills_short_side is None else int(stills_short_side)
        self.stills_every_s = float(stills_every_s)
        self.subtitle_min_share = float(subtitle_min_share)
        self.subtitle_top = float(subtitle_top)
        self.subtitle_min_aspect = float(subtitle_min_aspect)
        self.short_side = short_side
        self.box_score_threshold = float(box_score_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.unclip_ratio = float(unclip_ratio)
        self.min_side = int(min_side)
        self.num_threads = int(num_threads)
        self._detector: Any = None
        self._reason: str | None = None

    @property
    def stills(self) -> StillsRequest | None:
        """The stills the pipeline puts in ``Clip.stills`` for this scorer (``None``: none)."""
        if self.stills_short_side is None:
            return None
        return StillsRequest(self.stills_short_side, self.stills_every_s)

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

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        """An analysis frame at ``short_side`` (unchanged when ``short_side`` is None)."""
        h, w = frame.shape[:2]
        if self.short_side is None or min(h, w) == self.short_side:
            return frame
        s = self.short_side / min(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)

    def detect_boxes(self, frame: np.ndarray) -> np.ndarray:
        """Detected text quadrilaterals ``(N, 4, 2)`` (x, y in ``frame`` pixels) of one uint8 RGB frame."""
        if self._detector is None:
            if not self.available:
                raise RuntimeError(self.unavailable_reason)
            self._detector = self._load()
        boxes, _ = self._detector(np.ascontiguousarray(frame[..., ::-1]))  # the detector takes BGR
        return np.zeros((0, 4, 2), np.float32) if boxes is None or len(boxes) == 0 else np.asarray(boxes)

    def detect(self, frame: np.ndarray) -> tuple[float, int]:
        """``(text area ratio, number of boxes)`` of one uint8 ``(H, W, 3)`` RGB frame."""
        boxes = self.detect_boxes(frame)
        return boxes_area_ratio(boxes, frame.shape[0], frame.shape[1]), len(boxes)

    def looked_at(self, clip: Clip) -> list[np.ndarray]:
        """The frames scored: the stills nearest to the chosen frames when ``clip.stills`` has any,
        else the chosen analysis frames (at ``short_side``)."""
        indices = frame_indices(len(clip.frames), self.frames)
        if clip.stills:
            return [_rgb_still(clip.stills[k], k) for k in nearest_stills(clip.stills, indices)]
        return [self._resize(clip.frames[i]) for i in indices]

    def frame_stats(self, frame: np.ndarray) -> tuple[float, int, bool]:
        """``(text area ratio, number of boxes, holds a subtitle line)`` of one uint8 RGB frame."""
        boxes = self.detect_boxes(frame)
        h, w = frame.shape[:2]
        line = any(is_subtitle_line(b, h, self.subtitle_top, self.subtitle_min_aspect) for b in boxes)
        return boxes_area_ratio(boxes, h, w), len(boxes), line

    def score(self, clip: Clip) -> dict[str, Score]:
        """Max text ratio and box count over the looked-at frames of ``clip``, and ``has_subtitles``."""
        stats = [self.frame_stats(f) for f in self.looked_at(clip)]
        lines = sum(line for _, _, line in stats)
        return {"text_ratio": float(max((r for r, _, _ in stats), default=0.0)),
                "text_boxes": int(max((n for _, n, _ in stats), default=0)),
                "has_subtitles": subtitles_persist(lines, len(stats), self.subtitle_min_share)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_detector"] = None  # ONNX sessions do not pickle; reloaded lazily in the worker
        return state

    def __repr__(self) -> str:
        return (f"TextScorer(frames={self.frames}, short_side={self.short_side}, min_side={self.min_side}, "
                f"box_score_threshold={self.box_score_threshold}, stills_short_side={self.stills_short_side}, "
                f"stills_every_s={self.stills_every_s})")
