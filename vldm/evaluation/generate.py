"""Generate evaluation videos from a checkpoint: one per reference clip, with fixed seeds.

Image-to-video (``mode=i2v``, SVD): video ``i`` is conditioned on reference clip ``i``'s first
frame; text-to-video (``mode=t2v``, the base model): on its caption. Both take the clip's fps and
motion bucket (or fixed ones from the settings) and sample with seed ``base_seed + i`` (one seed per
clip), so every video is the one a single-clip sampler call gives for that input and seed, whatever
the batch or the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vldm.data.frames import frame_size
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.video.pixels import frames_to_tensor


@dataclass
class GenerationSettings:
    """How the evaluation videos are made.

    ``num_frames``, ``size``: the clip length and resolution (an int: square, or ``(height, width)``),
    as the reference clips.
    ``mode``: ``i2v`` (from each clip's first frame) or ``t2v`` (from its caption).
    ``fps`` / ``motion_bucket_id``: ``None`` takes each reference clip's. ``cond_aug``: i2v only.
    ``sampler``: overrides of
    the checkpoint's sampler preset (:class:`vldm.sampling.pipeline.SamplerConfig` fields).
    ``video_dir``: also write each video as ``<video_dir>/<index>_seed<seed>.mp4``. ``batch_size``:
    videos per sampler call (each with its own seed, so batching does not change them).
    """

    num_frames: int
    size: int | tuple[int, int]
    base_seed: int = 0
    mode: str = "i2v"
    fps: float | None = None
    motion_bucket_id: int | None = None
    cond_aug: float = 0.02
    sampler: dict[str, Any] = field(default_factory=dict)
    video_dir: Path | None = None
    device: str = "cpu"
    progress: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.size = frame_size(self.size)

    def seed(self, index: int) -> int:
        return self.base_seed + index

    def seeds_text(self, n: int) -> str:
        return f"{self.base_seed}..{self.base_seed + n - 1} (seed of video i = {self.base_seed} + i)"


def _check_mode(model: LatentDiffusion, mode: str, what: str) -> None:
    """Refuse a model whose task is not the mode's, naming the mode (or the inflation) that fits it."""
    from vldm.evaluation.checkpoints import MODE_TASKS, TASK_MODES, check_mode, task_words

    want, task = MODE_TASKS[check_mode(mode)], model.task
    if task == want:
        return
    fix = ("image stages are evaluated inflated into the mode's video model: give the stage run dir or run root"
           if task == "text_to_image" else f"evaluate it with mode={TASK_MODES[task]}")
    raise ValueError(f"{what} is {task_words(task, True)} model; mode={mode} generates with {task_words(want)} "
                     f"models ({fix})")


def _sample_batch(sampler: Any, clips: Any, chosen: list[int], settings: GenerationSettings, cfg: Any,
                  device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """Videos ``(b, t, 3, h, w)`` for reference clips ``chosen`` (see the module doc), and their fps."""
    fps = [settings.fps if settings.fps is not None else clips.fps[i] for i in chosen]
    buckets = [settings.motion_bucket_id if settings.motion_bucket_id is not None else clips.motion_bucket_ids[i]
               for i in chosen]
    fps_id = torch.tensor([max(int(round(f)) - 1, 0) for f in fps])
    bucket = torch.tensor([int(b) for b in buckets])
    seeds = [settings.seed(i) for i in chosen]
    if settings.mode == "t2v":
        h, w = settings.size
        video = sampler.text_to_video([clips.captions[i] for i in chosen], settings.num_frames, h, w,
                                      fps_id=fps_id, motion_bucket_id=bucket, cfg=cfg, seed=seeds)
        return video, fps
    image = frames_to_tensor(clips.videos[chosen, 0])
    video = sampler.image_to_video(image.to(device), settings.num_frames, fps_id=fps_id, motion_bucket_id=bucket,
                                   cond_aug=settings.cond_aug, cfg=cfg, seed=seeds)
    return video, fps


def sampler_config(model: LatentDiffusion, overrides: dict[str, Any]):
    """The checkpoint's sampler preset with the non-null ``overrides``."""
    from dataclasses import replace

    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    return replace(model.sampler_cfg, **chosen, progress=False)


@torch.no_grad()
def generate_videos(model: LatentDiffusion, clips: Any, settings: GenerationSettings, rank: int = 0, world: int = 1,
                    what: str = "checkpoint") -> tuple[list[int], np.ndarray]:
    """``(indices, videos)``: this rank's share of the reference clips (:func:`~vldm.evaluation.ranks.shard_indices`)
    and uint8 videos ``(len(indices), t, h, w, 3)`` generated from them (see the module doc)."""
    from tqdm import tqdm

    from vldm.evaluation.ranks import shard_indices
    from vldm.sampling.pipeline import LatentDiffusionSampler
    from vldm.video.pixels import tensor_to_frames

    _check_mode(model, settings.mode, what)
    if clips.num_frames < 1 or clips.hw != settings.size:
        raise ValueError(f"reference clips are {clips.hw[1]}x{clips.hw[0]}, generation asks for "
                         f"{settings.size[1]}x{settings.size[0]}")
    cfg = sampler_config(model, settings.sampler)
    sampler = LatentDiffusionSampler.from_model(model)
    indices = shard_indices(len(clips), rank, world)
    device = torch.device(settings.device)
    out = np.zeros((len(indices), settings.num_frames, *settings.size, 3), np.uint8)
    if settings.video_dir is not None:
        Path(settings.video_dir).mkdir(parents=True, exist_ok=True)
    batches = [list(range(j, min(j + max(1, settings.batch_size), len(indices))))
               for j in range(0, len(indices), max(1, settings.batch_size))]
    bar = tqdm(batches, desc=f"generate {what}", disable=not settings.progress or rank != 0, leave=False)
    for rows in bar:
        chosen = [indices[j] for j in rows]
        video, fps = _sample_batch(sampler, clips, chosen, settings, cfg, device)
        for k, (j, i) in enumerate(zip(rows, chosen)):
            out[j] = tensor_to_frames(video[k])
            if settings.video_dir is not None:
                from vldm.io.video_io import write_mp4

                write_mp4(Path(settings.video_dir) / f"{i:05d}_seed{settings.seed(i)}.mp4", out[j], fps=float(fps[k]))
    return indices, out
