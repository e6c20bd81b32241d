"""Curation scorers: a clip in, named scores out (the ``Scorer`` protocol of ``data_curation.records``).

Motion (optical flow at 2 fps), text (OCR detection area), CLIP (aesthetic, caption similarity)
and captions, after Stable Video Diffusion (Blattmann et al., 2023, Sec. 3.1 / App. E.2).
"""

from data_curation.scorers.captions import Captioner, CaptionScorer, TransformersCaptioner
from data_curation.scorers.clip_scores import ClipScorer, load_linear_head
from data_curation.scorers.motion import MotionScorer, sample_indices
from data_curation.scorers.text import TextScorer, boxes_area_ratio, frame_indices

__all__ = [
    "CaptionScorer",
    "Captioner",
    "ClipScorer",
    "MotionScorer",
    "TextScorer",
    "TransformersCaptioner",
    "boxes_area_ratio",
    "frame_indices",
    "load_linear_head",
    "sample_indices",
]
