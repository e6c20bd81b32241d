"""What a number was measured on: the evaluation protocol, its cache key, and count warnings.

Every metric value is stored with the :class:`EvalProtocol` it was computed under (number of
videos, frames, resolution, fps, seeds, feature network), so that two numbers are only compared
when their protocols match. Reference statistics are cached under :meth:`EvalProtocol.key`.

Published protocols: FVD as in StyleGAN-V (Skorokhodov et al., 2022): 2048 videos of 16
consecutive frames, I3D features; FID as in StyleGAN (Karras et al.) / Heusel et al. (2017):
50,000 images, Inception-v3 pool features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Below these counts a metric is mostly sampling noise (Fréchet distances are biased upwards
# for small samples; the bias depends on the count, so numbers from different counts differ).
MIN_COUNTS: dict[str, int] = {
    "fvd": 256,
    "fid": 2048,
    "frpd": 64,
    "clip_score": 32,
    "clip_temporal": 32,
    "motion": 32,
    "psnr": 16,
    "ssim": 16,
    "flicker": 16,
    "warping_error": 16,
    "caption_colour_accuracy": 16,
    "caption_direction_accuracy": 16,
}

# What published numbers use, quoted in the warning.
PUBLISHED_COUNTS: dict[str, str] = {
    "fvd": "StyleGAN-V protocol uses 2048",
    "fid": "StyleGAN/clean-fid protocols use 50,000",
}

DISPLAY_NAMES: dict[str, str] = {"fvd": "FVD", "fid": "FID", "frpd": "FRPD", "clip_score": "CLIP score",
                                 "clip_temporal": "CLIP temporal consistency",
                                 "caption_colour_accuracy": "caption colour accuracy",
                                 "caption_direction_accuracy": "caption direction accuracy"}


@dataclass(frozen=True)
class EvalProtocol:
    """The conditions a metric value was measured under.

    ``metric``: e.g. ``"fvd"``; ``feature_net``: the feature network's name (``"i3d_torchscript"``,
    ``"rp256-s0"``, ``"none"`` for weight-free metrics); ``num_videos``: how many generated (or
    reference) videos; ``num_frames``, ``resolution`` (an int: square, else ``[height, width]``), ``fps``:
    what each video was when scored;
    ``seeds``: the sampling seeds, as text (e.g. ``"0-2047"``); ``extra``: anything else that
    changes the number (JSON-serialisable: dataset name, sampler steps, cfg scale, ...).
    """

    metric: str
    feature_net: str
    num_videos: int
    num_frames: int
    resolution: int | list[int]
    fps: float
    seeds: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (``extra`` copied)."""
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    def key(self, length: int = 12) -> str:
        """Short stable hash (sha256 hex prefix) of the sorted-key JSON of :meth:`as_dict`."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]

    def __hash__(self) -> int:  # ``extra`` is a dict, so the generated hash would fail
        return hash(self.key())

    def warning(self) -> str | None:
        """:func:`count_warning` for this protocol's metric and video count."""
        return count_warning(self.metric, self.num_videos)


def count_warning(metric: str, n: int, unit: str = "videos") -> str | None:
    """A one-line warning when ``n`` items are too few for ``metric`` to mean much, else ``None``.

    >>> count_warning("fvd", 48)
    'FVD from 48 videos is not comparable to published numbers (StyleGAN-V protocol uses 2048; under 256 it is mostly noise)'
    """
    key = metric.lower()
    minimum = MIN_COUNTS.get(key)
    if minimum is None or n >= minimum:
        return None
    name = DISPLAY_NAMES.get(key, metric)
    published = PUBLISHED_COUNTS.get(key)
    if published is not None:
        return (f"{name} from {n} {unit} is not comparable to published numbers "
                f"({published}; under {minimum} it is mostly noise)")
    return f"{name} from {n} {unit} is mostly noise (under {minimum}); compare runs only at equal counts"
