"""``sample.py``'s work: image(s) in, mp4 + gif (+ frames) + a json of the settings out, per image (image-to-video);
or a prompt in, PNG + json out (a text-to-image stage).

Each output is named ``<image or prompt>_seed<N>_<settings hash>``: the hash covers the checkpoint
and everything that changes the result (:func:`settings_hash`), so runs with other settings never
replace each other; an existing output is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vldm.diffusion.sampler_config import SamplerConfig
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.sampling.images import fit_size, list_images, load_image, open_image
from vldm.sampling.memory_plan import format_bytes

log = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
UNRECORDED_FPS = 7  # SVD's preset, for runs whose weights do not record the rate they trained at


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


@dataclass
class Loaded:
    """A model to sample, its preset settings, and what the weights are (for names and the json)."""

    model: LatentDiffusion
    preset: dict
    weights: Path
    source: str        # "model config <name>" | "vldm run" | "vldm export"
    metadata: dict


def load_for_sampling(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> Loaded:
    """The model and its preset from ``model=... checkpoint=FILE``, a file exported by vldm (it carries
    its model config), or a vldm run directory (its ``config.yaml``)."""
    from vldm.checkpoints.load import load_model_file, load_run, resolve_run
    from vldm.checkpoints.svd_export import exported_config, load_exported
    from vldm.io.safe_load import file_metadata

    path = Path(cfg.checkpoint)
    if cfg.get("model") is not None:
        model = load_model_file(cfg.model, path, dtype=dtype, device="cpu")
        name = str(cfg.model.get("name", ""))
        return Loaded(model, _container(cfg.model.get("sampling")), path, f"model config {name}", file_metadata(path))
    if path.is_file() and exported_config(path) is not None:
        metadata = file_metadata(path)
        model = load_exported(path, dtype=dtype, device="cpu")
        return Loaded(model, exported_preset(metadata), path, "vldm export", metadata)
    run_dir, weights = resolve_run(path)
    model, train_cfg = load_run(weights)
    if dtype != torch.float32:
        model = model.to(dtype)
    metadata = file_metadata(weights)
    preset = run_preset(train_cfg, metadata, run_dir, video=model.image_to_video)
    return Loaded(model, preset, weights, "vldm run", metadata)


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
    """A run's preset: its training size and (``video``) clip length and the fps it trained at, then its
    model's ``sampling``."""
    height, width = frame_size_of(train_cfg.data.size)
    preset = {"height": height, "width": width}
    if video:
        if train_cfg.data.get("num_frames") is not None:
            preset["num_frames"] = int(train_cfg.data.num_frames)
        preset = _with_fps(preset, metadata, run_dir)
    preset.update(_container(train_cfg.model.get("sampling")))
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


def _container(node) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


def checkpoint_identity(weights: Path, metadata: dict) -> str:
    """The weights file, by path and content (its recorded hash, else its size and modification time)."""
    from vldm.io.safe_load import CONTENT_HASH

    stat = weights.stat()
    content = metadata.get(CONTENT_HASH) or f"{stat.st_size}:{stat.st_mtime_ns}"
    return f"{weights.resolve()}:{content}"


def settings_hash(record: dict) -> str:
    """8 hex digits of the SHA-256 of ``record`` (the checkpoint, input and every setting that changes the output)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:8]


def output_stem(out_dir: Path, name: str, seed: int, record: dict, suffix: str, overwrite: bool) -> Path:
    """``out_dir/<name>_seed<seed>_<hash>``; refuses an existing ``stem + suffix`` unless ``overwrite``."""
    stem = out_dir / f"{name}_seed{seed}_{settings_hash(record)}"
    target = stem.with_suffix(suffix)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (same checkpoint, input and settings): give overwrite=true to "
                              f"replace it, or another output_dir")
    return stem


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


def check_inputs(cfg: DictConfig, image_to_video: bool) -> None:
    """Image-to-video models take ``image=...``, text-to-image models ``prompt=...``; refuse the other."""
    image, prompt = cfg.get("image"), cfg.get("prompt")
    if image_to_video and prompt is not None:
        raise ValueError(f"{cfg.checkpoint} is an image-to-video model: it takes image=..., not prompt=... "
                         f"(prompts are for text-to-image models, a vldm 'image' stage)")
    if image_to_video and image is None:
        raise ValueError(f"{cfg.checkpoint} is an image-to-video model: give image=PATH (a file or a folder)")
    if not image_to_video and image is not None:
        raise ValueError(f"{cfg.checkpoint} is a text-to-image model: it takes prompt=..., not image=... "
                         f"(drop image; videos come from a 'video' or 'hq' stage)")
    if not image_to_video and prompt is None:
        raise ValueError(f"{cfg.checkpoint} is a text-to-image model: give prompt=\"...\" (it writes images)")


def sampler_config(cfg: DictConfig, model: LatentDiffusion) -> SamplerConfig:
    """The model's sampler preset with the command line's ``sampler.*`` over it."""
    chosen = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    return replace(model.sampler_cfg, **chosen, progress=True)


def base_record(cfg: DictConfig, loaded: Loaded, device: torch.device, dtype: torch.dtype,
                sampler_cfg: SamplerConfig) -> dict:
    """What every output's name hash covers besides its input and seed (a memory budget may change the dtype)."""
    return {"checkpoint": checkpoint_identity(loaded.weights, loaded.metadata), "source": loaded.source,
            "device": device.type, "dtype": str(dtype), "max_memory": cfg.max_memory, "resize": cfg.resize,
            "sampler": {k: v for k, v in asdict(sampler_cfg).items() if k != "progress"}}


def sample_videos(cfg: DictConfig) -> list[Path]:
    """Generate one clip per input image (or one image per prompt for a text-to-image model); returns the
    mp4 (png) paths."""
    images = list_images(cfg.image)[: cfg.limit] if cfg.get("image") is not None else []  # fail before loading
    device = resolve_device(cfg.device)
    if cfg.max_memory is not None and device.type != "cuda":
        raise ValueError(f"max_memory={cfg.max_memory} is a budget for CUDA memory; on {device} nothing is streamed "
                         "or offloaded and no peak is measured: drop max_memory, or sample with device=cuda")
    dtype = resolve_dtype(cfg.dtype, device)
    loaded = load_for_sampling(cfg, device, dtype)
    check_inputs(cfg, loaded.model.image_to_video)
    if not loaded.model.image_to_video:
        return sample_images(cfg, loaded, device, dtype)
    return _sample_clips(cfg, loaded, images, device, dtype)


def _sample_clips(cfg: DictConfig, loaded: Loaded, images: list[Path], device: torch.device,
                  dtype: torch.dtype) -> list[Path]:
    from vldm.io.video_io import write_gif, write_mp4
    from vldm.sampling.lean import lean_sampler
    from vldm.video.pixels import tensor_to_frames

    model = loaded.model
    base = video_settings(cfg, video_preset(loaded.preset))
    sampler_cfg = sampler_config(cfg, model)
    record = base_record(cfg, loaded, device, dtype, sampler_cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(images):
        image, settings = conditioning_image(path, base, cfg.resize)
        seed = cfg.seed + i
        stem = output_stem(out_dir, path.stem, seed, {**record, "image": str(path.resolve()),
                                                      "settings": asdict(settings)}, ".mp4", cfg.overwrite)
        sampler, plan = lean_sampler(model, device, dtype, cfg.max_memory, settings.num_frames, settings.height,
                                     settings.width, sampler_cfg)
        log.info("memory plan for %dx%d x %d frames:\n%s", settings.width, settings.height, settings.num_frames,
                 plan.describe())
        start = time.perf_counter()
        video = sampler.image_to_video(image.to(device), settings.num_frames, fps_id=settings.fps - 1,
                                       motion_bucket_id=settings.motion_bucket_id, cond_aug=settings.cond_aug,
                                       cfg=sampler_cfg, seed=seed)
        seconds = time.perf_counter() - start
        log.info("clip %d/%d: %.1f s, measured peak memory %s", i + 1, len(images), seconds,
                 format_bytes(sampler.peak_memory))
        frames = tensor_to_frames(video[0])
        write_mp4(stem.with_suffix(".mp4"), frames, fps=settings.fps)
        write_gif(stem.with_suffix(".gif"), frames, fps=settings.fps)
        if cfg.save_frames:
            write_frames(stem, frames)
        stem.with_suffix(".json").write_text(json.dumps({
            "image": str(path), "checkpoint": str(cfg.checkpoint), "model": _model_name(cfg, loaded),
            "seed": seed, **asdict(settings), "fps_id": settings.fps - 1, "sampler": asdict(sampler_cfg),
            "dtype": str(dtype), "device": str(device), "memory_plan": plan.as_dict(),
            "peak_memory_bytes": sampler.peak_memory, "seconds": round(seconds, 3),
        }, indent=2, default=str))
        log.info("wrote %s", stem.with_suffix(".mp4"))
        written.append(stem.with_suffix(".mp4"))
    return written


def _model_name(cfg: DictConfig, loaded: Loaded) -> str:
    return str(cfg.model.get("name", "")) if cfg.get("model") is not None else loaded.source


def prompt_slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt (``a_red_square``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:limit] or "prompt"


def image_size(cfg: DictConfig, preset: dict) -> tuple[int, int]:
    """``(height, width)`` of a text-to-image sample: the command line over the model's preset."""
    height, width = cfg.get("height") or preset.get("height"), cfg.get("width") or preset.get("width")
    if height is None or width is None:
        raise ValueError("the model config has no sampling preset for its image size: give height=... width=...")
    return int(height), int(width)


def sample_images(cfg: DictConfig, loaded: Loaded, device: torch.device, dtype: torch.dtype) -> list[Path]:
    """A text-to-image model: one PNG (+ json) per prompt, prompt ``i`` with seed ``seed + i``."""
    from PIL import Image

    from vldm.sampling.lean import lean_sampler
    from vldm.video.pixels import tensor_to_frames

    prompts = [cfg.prompt] if isinstance(cfg.prompt, str) else [str(p) for p in cfg.prompt]
    height, width = image_size(cfg, loaded.preset)
    sampler_cfg = sampler_config(cfg, loaded.model)
    record = {**base_record(cfg, loaded, device, dtype, sampler_cfg), "height": height, "width": width}
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler, plan = lean_sampler(loaded.model, device, dtype, cfg.max_memory, 1, height, width, sampler_cfg)
    written = []
    for i, prompt in enumerate(prompts):
        seed = cfg.seed + i
        stem = output_stem(out_dir, prompt_slug(prompt), seed, {**record, "prompt": prompt}, ".png", cfg.overwrite)
        start = time.perf_counter()
        image = sampler.text_to_image([prompt], height, width, cfg=sampler_cfg, seed=seed)
        seconds = time.perf_counter() - start
        Image.fromarray(tensor_to_frames(image)[0]).save(stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps({
            "prompt": prompt, "checkpoint": str(cfg.checkpoint), "model": _model_name(cfg, loaded), "seed": seed,
            "height": height, "width": width, "sampler": asdict(sampler_cfg), "dtype": str(dtype),
            "device": str(device), "memory_plan": plan.as_dict(), "seconds": round(seconds, 3),
        }, indent=2, default=str))
        log.info("wrote %s", stem.with_suffix(".png"))
        written.append(stem.with_suffix(".png"))
    return written


def write_frames(stem: Path, frames) -> Path:
    """Every frame as ``<stem>_frames/000000.png``."""
    from PIL import Image

    folder = stem.parent / f"{stem.name}_frames"
    folder.mkdir(parents=True, exist_ok=True)
    for j, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{j:06d}.png")
    return folder
