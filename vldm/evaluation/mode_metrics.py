"""Which metrics apply to a mode: frame-0 fidelity for image-to-video, caption following for text-to-video.

``i2v``: the video starts from the reference clip's first frame, so frame-0 PSNR / SSIM measure how
well it keeps it. ``t2v``: there is no conditioning image (PSNR / SSIM are skipped with the reason);
on toy reference data (every caption names a toy colour and direction,
:func:`vldm.evaluation.caption_following.prompt_target`) caption following scores whether the
generated shape has the caption's colour and moves in its direction, one 0/1 per video whose mean is
the accuracy (higher is better).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CAPTION_METRICS: dict[str, str] = {"caption_colour_accuracy": "colour_ok",
                                   "caption_direction_accuracy": "direction_ok"}
NO_CONDITIONING_IMAGE = ("frame-0 PSNR / SSIM compare with the conditioning image; mode=t2v generates from the "
                         "caption, with no conditioning image")


def toy_caption_problem(captions: Sequence[str]) -> str | None:
    """Why caption following cannot score these reference captions (one is not a toy caption), or None."""
    from vldm.evaluation.caption_following import prompt_target

    if not captions:
        return "no reference captions"
    for i, caption in enumerate(captions):
        try:
            prompt_target(caption)
        except ValueError as err:
            return f"reference caption {i} is not a toy caption, and caption following reads toy clips only: {err}"
    return None


def mode_skips(mode: str, captions: Sequence[str]) -> dict[str, str]:
    """``{metric: reason}`` for the metrics ``mode`` does not compute on these reference captions."""
    if mode != "t2v":
        return {}
    skipped = {"psnr": NO_CONDITIONING_IMAGE, "ssim": NO_CONDITIONING_IMAGE}
    problem = toy_caption_problem(captions)
    if problem is not None:
        skipped.update({name: problem for name in CAPTION_METRICS})
    return skipped


def caption_scores(videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-video 0/1 of :data:`CAPTION_METRICS` for uint8 ``videos`` ``(n, t, h, w, 3)`` made from ``prompts``."""
    from vldm.evaluation.caption_following import caption_following

    rows = caption_following(list(videos), list(prompts))["rows"]
    return {name: np.array([float(r[key]) for r in rows]) for name, key in CAPTION_METRICS.items()}
