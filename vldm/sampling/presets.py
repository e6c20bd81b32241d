"""What a clip is conditioned on and how big it is: the model's preset, the command line over it.

A vldm run's preset is its training size and clip length and the fps it trained at (its weights'
``fps`` metadata), then its model's ``sampling``; an exported file records the same.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
UNRECORDED_FPS = 7  # SVD's preset, for runs whose weights do not record the rate they trained at


@dataclass
class VideoSettings:
    """What one clip is conditioned on and how big it is (official SVD conventions).

    ``cond_aug``: the noise on image-to-video's conditioning frame; None for text-to-video.
    """

    height: int
    width: int
    num_frames: int
    fps: int = 7                 # fps_id = fps - 1
    motion_bucket_id: int = 127
    cond_aug: float | None = 0.02

    def fields(self) -> dict:
        """The settings that apply (``cond_aug`` only where there is a conditioning frame)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _chosen(cfg: DictConfig, preset: dict, task: str) -> dict:
    """The preset with the command line's settings over it; text-to-video takes no ``cond_aug``."""
    keys = ["height", "width", "num_frames", "fps", "motion_bucket_id", "cond_aug"]
    if task == "text_to_video":
        if cfg.get("cond_aug") is not None:
            raise ValueError(f"cond_aug={cfg.cond_aug} is the noise on an image-to-video model's conditioning frame; "
                             f"{cfg.checkpoint} is a text-to-video model, which has none: drop cond_aug")
        keys.remove("cond_aug")
        preset = {k: v for k, v in preset.items() if k != "cond_aug"}
    merged = {**preset, **{k: cfg.get(k) for k in keys if cfg.get(k) is not None}}
    return {**merged, "cond_aug": None} if task == "text_to_video" else merged


def video_settings(cfg: DictConfig, preset: dict, task: str = "image_to_video") -> VideoSettings:
    """Command line over the model's preset; refuses what the model cannot take, warns like the official script."""
    merged = _chosen(cfg, preset, task)
    unset = [k for k in ("height", "width", "num_frames") if k not in merged]
    if unset:
        raise ValueError(f"the model config has no sampling preset for {', '.join(unset)}: give "
                         + " ".join(f"{k}=..." for k in unset))
    settings = VideoSettings(**merged)
    if not 0 <= settings.motion_bucket_id <= 255:
        raise ValueError(f"motion_bucket_id must be in [0, 255] (the range SVD was trained on), got "
                         f"{settings.motion_bucket_id}")
    if settings.fps < 1:
        raise ValueError(f"fps must be at least 1, got {settings.fps}")
    if not 6 <= settings.fps <= 31:
        log.warning("fps %d (fps_id %d) is outside the 6..31 the official script recommends; expect worse clips",
                    settings.fps, settings.fps - 1)
    if settings.cond_aug is not None and settings.cond_aug < 0:
        raise ValueError(f"cond_aug must be >= 0, got {settings.cond_aug}")
    if settings.num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {settings.num_frames}")
    return settings


def frame_size_of(size: Any) -> tuple[int, int]:
    """``(height, width)`` of a training ``data.size`` (an int, ``[height, width]``, or either as JSON text)."""
    from vldm.data.frames import frame_size

    if isinstance(size, str):
        size = json.loads(size)
    return frame_size(OmegaConf.to_container(size) if OmegaConf.is_config(size) else size)


def trained_fps(metadata: dict) -> int | None:
    """The frame rate a run's clips were trained at (``fps_id + 1``), from its weights' ``fps`` metadata:
    an int, or a JSON ``{fps: number of clips}`` when it varied (the most frequent; ties: the lowest)."""
    raw = metadata.get("fps")
    if raw in (None, ""):
        return None
    value = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(value, dict):
        if not value:
            return None
        return int(min(value, key=lambda fps: (-value[fps], int(fps))))
    return int(value)


def _with_fps(preset: dict, metadata: dict, source: str | Path) -> dict:
    fps = trained_fps(metadata)
    if fps is None:
        log.warning("%s does not record the frame rate it was trained at (weights metadata 'fps'): fps preset %d "
                    "(SVD's); give fps=N for the rate its clips had", source, UNRECORDED_FPS)
        fps = UNRECORDED_FPS
    return {**preset, "fps": fps}


def run_preset(train_cfg: DictConfig, metadata: dict, run_dir: str | Path, video: bool = True) -> dict:
    """A run's preset: its training size and (``video``: a text- or image-to-video model) clip length and
    the fps it trained at, then its model's ``sampling``."""
    height, width = frame_size_of(train_cfg.data.size)
    preset = {"height": height, "width": width}
    if video:
        if train_cfg.data.get("num_frames") is not None:
            preset["num_frames"] = int(train_cfg.data.num_frames)
        preset = _with_fps(preset, metadata, run_dir)
    preset.update(container(train_cfg.model.get("sampling")))
    return preset


def exported_preset(metadata: dict) -> dict:
    """An exported file's preset, as :func:`run_preset` gave for its run (the export records it)."""
    preset: dict = {}
    if metadata.get("resolution"):
        preset["height"], preset["width"] = frame_size_of(metadata["resolution"])
    if metadata.get("num_frames"):
        preset["num_frames"] = int(metadata["num_frames"])
    preset = _with_fps(preset, metadata, metadata.get("source_run", "the exported file"))
    preset.update(json.loads(metadata.get("sampling") or "{}"))
    return preset


def video_preset(preset: dict) -> dict:
    """The preset's entries that :class:`VideoSettings` takes."""
    return {k: v for k, v in preset.items() if k in VideoSettings.__dataclass_fields__}


def image_size(cfg: DictConfig, preset: dict) -> tuple[int, int]:
    """``(height, width)`` of a text-to-image sample: the command line over the model's preset."""
    height, width = cfg.get("height") or preset.get("height"), cfg.get("width") or preset.get("width")
    if height is None or width is None:
        raise ValueError("the model config has no sampling preset for its image size: give height=... width=...")
    return int(height), int(width)


def container(node) -> dict:
    """A config node as a plain dict (None: empty)."""
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}
