"""``sample.py``'s work: image(s) in; mp4 + gif (+ frames) + a json of the settings out, per image."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vldm.sampling.images import fit_size, list_images, load_image, open_image
from vldm.sampling.memory_plan import format_bytes

log = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class VideoSettings:
    """What one clip is conditioned on and how big it is (official SVD conventions)."""

    height: int
    width: int
    num_frames: int
    fps: int = 7                 # fps_id = fps - 1
    motion_bucket_id: int = 127
    cond_aug: float = 0.02


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is visible (use device=cpu or device=auto)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def video_settings(cfg: DictConfig, preset: dict) -> VideoSettings:
    """Command line over the model's preset; refuses what the model cannot take, warns like the official script."""
    chosen = {k: cfg.get(k) for k in ("height", "width", "num_frames", "fps", "motion_bucket_id", "cond_aug")}
    merged = {**preset, **{k: v for k, v in chosen.items() if v is not None}}
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
    if settings.cond_aug < 0:
        raise ValueError(f"cond_aug must be >= 0, got {settings.cond_aug}")
    if settings.num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {settings.num_frames}")
    return settings


def load_for_sampling(cfg: DictConfig, device: torch.device, dtype: torch.dtype):
    """(model, preset settings) from ``model=... checkpoint=FILE`` or from a vldm run directory."""
    from vldm.checkpoints.load import load_model_file, load_run

    if cfg.get("model") is not None:
        model = load_model_file(cfg.model, cfg.checkpoint, dtype=dtype, device="cpu")
        preset = _container(cfg.model.get("sampling"))
    else:
        model, train_cfg = load_run(cfg.checkpoint)
        if not model.image_to_video:
            raise ValueError(f"{cfg.checkpoint} is a text-to-image model; sample.py makes videos from images")
        if dtype != torch.float32:
            model = model.to(dtype)
        preset = {"height": train_cfg.data.size, "width": train_cfg.data.size,
                  "num_frames": train_cfg.data.num_frames, "fps": 8}
        preset.update(_container(train_cfg.model.get("sampling")))
    if not model.image_to_video:
        raise ValueError(f"{cfg.checkpoint} is a text-to-image model; sample.py makes videos from images")
    preset = {k: v for k, v in preset.items() if k in VideoSettings.__dataclass_fields__}
    return model, preset


def _container(node) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


def conditioning_image(path: Path, settings: VideoSettings, resize: str) -> tuple[torch.Tensor, VideoSettings]:
    """The image as the model takes it, and the settings with the size actually used."""
    if resize == "keep":
        img = open_image(path)
        width, height = fit_size(img.width, img.height)
        if (width, height) != (img.width, img.height):
            log.warning("%s is %dx%d, not a multiple of 64: resizing to %dx%d", path, img.width, img.height,
                        width, height)
        if (width, height) != (settings.width, settings.height):
            log.warning("the model was trained at %dx%d; %dx%d will give worse clips (consider a higher cond_aug)",
                        settings.width, settings.height, width, height)
        settings = replace(settings, height=height, width=width)
    elif resize != "crop":
        raise ValueError(f"resize must be crop or keep, got {resize!r}")
    return load_image(path, settings.height, settings.width)[None], settings


def sample_videos(cfg: DictConfig) -> list[Path]:
    """Generate one clip per input image; returns the mp4 paths."""
    from vldm.io.video_io import write_gif, write_mp4
    from vldm.sampling.lean import lean_sampler
    from vldm.video.pixels import tensor_to_frames

    images = list_images(cfg.image)[: cfg.limit]  # fail on a missing image before loading gigabytes
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, preset = load_for_sampling(cfg, device, dtype)
    base = video_settings(cfg, preset)
    chosen = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    sampler_cfg = replace(model.sampler_cfg, **chosen, progress=True)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(images):
        image, settings = conditioning_image(path, base, cfg.resize)
        sampler, plan = lean_sampler(model, device, dtype, cfg.max_memory, settings.num_frames, settings.height,
                                     settings.width, sampler_cfg)
        log.info("memory plan for %dx%d x %d frames:\n%s", settings.width, settings.height, settings.num_frames,
                 plan.describe())
        seed = cfg.seed + i
        start = time.perf_counter()
        video = sampler.image_to_video(image.to(device), settings.num_frames, fps_id=settings.fps - 1,
                                       motion_bucket_id=settings.motion_bucket_id, cond_aug=settings.cond_aug,
                                       cfg=sampler_cfg, seed=seed)
        seconds = time.perf_counter() - start
        log.info("clip %d/%d: %.1f s, measured peak memory %s", i + 1, len(images), seconds,
                 format_bytes(sampler.peak_memory))
        frames = tensor_to_frames(video[0])
        stem = out_dir / f"{path.stem}_seed{seed}"
        write_mp4(stem.with_suffix(".mp4"), frames, fps=settings.fps)
        write_gif(stem.with_suffix(".gif"), frames, fps=settings.fps)
        if cfg.save_frames:
            write_frames(stem, frames)
        stem.with_suffix(".json").write_text(json.dumps({
            "image": str(path), "checkpoint": str(cfg.checkpoint),
            "model": str(cfg.model.get("name", "")) if cfg.get("model") is not None else "vldm run",
            "seed": seed, **asdict(settings), "fps_id": settings.fps - 1, "sampler": asdict(sampler_cfg),
            "device": str(device), "memory_plan": plan.as_dict(), "peak_memory_bytes": sampler.peak_memory,
            "seconds": round(seconds, 3),
        }, indent=2, default=str))
        log.info("wrote %s", stem.with_suffix(".mp4"))
        written.append(stem.with_suffix(".mp4"))
    return written


def write_frames(stem: Path, frames) -> Path:
    """Every frame as ``<stem>_frames/000000.png``."""
    from PIL import Image

    folder = stem.parent / f"{stem.name}_frames"
    folder.mkdir(parents=True, exist_ok=True)
    for j, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{j:06d}.png")
    return folder
