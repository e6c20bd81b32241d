"""The held-out split of a curation run: the kept clips training validates on, never trains on.

A video is held out when a hash of its ``video_id`` falls below ``fraction`` (all its clips go
together, so no scene of a validation video is also trained on). The choice depends only on the
video's id and the fraction, not on the other inputs, so rerunning, resuming or adding inputs never
moves a video between the splits. Small inputs: when the hash picks no video although two or more
have kept clips, the one with the smallest hash is held out; when it picks all of them, the one
with the largest stays in training. With fewer than two such videos nothing is held out.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

SPLITS = ("train", "heldout")


def heldout_rank(vid: str) -> float:
    """A uniform number in [0, 1) fixed by the video id (SHA-1 of ``heldout:<video_id>``)."""
    digest = hashlib.sha1(f"heldout:{vid}".encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / 16**15


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float, or ``ValueError`` unless it is in [0, 1)."""
    value = float(fraction)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1) (0: no validation split), got {fraction}")
    return value


def heldout_videos(video_ids: Iterable[str], fraction: float) -> set[str]:
    """The ids among ``video_ids`` (videos with kept clips) whose clips form the held-out split."""
    fraction = check_fraction(fraction)
    ids = sorted(set(video_ids), key=heldout_rank)
    if fraction == 0.0 or len(ids) < 2:
        return set()
    chosen = [v for v in ids if heldout_rank(v) < fraction] or ids[:1]
    return set(chosen if len(chosen) < len(ids) else ids[:-1])
