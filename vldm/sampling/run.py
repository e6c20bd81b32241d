"""``sample.py``'s work: image(s) in, mp4 + gif (+ frames) + a json of the settings out, per image (image-to-video);
prompt(s) in, the same per prompt (text-to-video); or prompt(s) in, PNG + json out (a text-to-image stage).

Each output is named ``<image stem or prompt slug>_seed<N>_<settings hash>``: the hash covers the
checkpoint and everything that changes the result (:func:`settings_hash`), so runs with other
settings never replace each other; an existing output is refused unless ``overwrite=true``.
Input ``i`` (image or prompt) is sampled with seed ``seed + i``, alone, so that it gives the same
output whatever else is sampled with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vldm.diffusion.sampler_config import SamplerConfig
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.sampling.images import fit_size, list_images, load_image, open_image
from vldm.sampling.memory_plan import format_bytes
from vldm.sampling.presets import (VideoSettings, container, exported_preset, image_size, run_preset, video_preset,
                                   video_settings)
from vldm.sampling.long_video import LongVideo, segment_count, window_spans
from vldm.sampling.prompts import prompt_slug, read_prompts

log = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


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


@dataclass
class Loaded:
    """A model to sample, its preset settings, and what the weights are (for names and the json)."""

    model: LatentDiffusion
    preset: dict
    weights: Path
    source: str        # "model config <name>" | "vldm run" | "vldm export"
    metadata: dict
    loras: list | None = None  # the LoRA files on the model and their scales (:func:`with_loras`)


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
        return Loaded(model, container(cfg.model.get("sampling")), path, f"model config {name}", file_metadata(path))
    if path.is_file() and exported_config(path) is not None:
        metadata = file_metadata(path)
        model = load_exported(path, dtype=dtype, device="cpu")
        return Loaded(model, exported_preset(metadata), path, "vldm export", metadata)
    run_dir, weights = resolve_run(path)
    model, train_cfg = load_run(weights)
    if dtype != torch.float32:
        model = model.to(dtype)
    metadata = file_metadata(weights)
    preset = run_preset(train_cfg, metadata, run_dir, video=model.task != "text_to_image")
    return Loaded(model, preset, weights, "vldm run", metadata)


def lora_args(cfg: DictConfig) -> list[tuple[Path, float]]:
    """``lora=[PATH:SCALE, ...]`` parsed (a single string is one LoRA)."""
    from vldm.adapters.merge import parse_lora_arg

    items = cfg.get("lora") or []
    items = [items] if isinstance(items, str) else list(items)
    return [parse_lora_arg(str(item)) for item in items]


def with_loras(loaded: Loaded, loras: list[tuple[Path, float]], merge: bool) -> Loaded:
    """``loaded`` with the LoRA files on its UNet (peft layers, or merged into the weights); the outputs' names
    and json record which files, by content, at which scales."""
    from vldm.adapters.merge import apply_loras
    from vldm.io.safe_load import file_metadata

    if not loras:
        return loaded
    apply_loras(loaded.model.network, loras, merge=merge)
    record = [{"file": checkpoint_identity(path, file_metadata(path)), "scale": scale} for path, scale in loras]
    log.info("LoRA %s on the model (%s)", ", ".join(f"{p}:{s}" for p, s in loras), "merged" if merge else "unmerged")
    return replace(loaded, loras=record)


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


TAKES = {"image_to_video": "image=PATH (a file or a folder)",
         "text_to_video": 'prompt="..." (or a list) or prompts=FILE (one prompt per line)',
         "text_to_image": 'prompt="..." (or a list) or prompts=FILE (it writes images)'}


def check_inputs(cfg: DictConfig, task: str, prompts: list[str]) -> None:
    """Image-to-video models take ``image=...``; text-to-video and text-to-image models prompts; refuse the other."""
    image, name = cfg.get("image"), task.replace("_", "-")
    if task == "image_to_video" and prompts:
        raise ValueError(f"{cfg.checkpoint} is an image-to-video model: it takes image=..., not prompt=... or "
                         f"prompts=... (prompts are for text-to-video models, a vldm 'video' or 'hq' stage, and "
                         f"text-to-image models, an 'image' stage)")
    if task != "image_to_video" and image is not None:
        raise ValueError(f"{cfg.checkpoint} is a {name} model: it takes prompt=... or prompts=FILE, not image=... "
                         f"(drop image; clips from an image come from an image-to-video model, a vldm 'i2v' stage)")
    if (task == "image_to_video" and image is None) or (task != "image_to_video" and not prompts):
        raise ValueError(f"{cfg.checkpoint} is a {name} model: give {TAKES[task]}")


def sampler_config(cfg: DictConfig, model: LatentDiffusion) -> SamplerConfig:
    """The model's sampler preset with the command line's ``sampler.*`` over it."""
    chosen = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    return replace(model.sampler_cfg, **chosen, progress=True)


def base_record(cfg: DictConfig, loaded: Loaded, device: torch.device, dtype: torch.dtype,
                sampler_cfg: SamplerConfig) -> dict:
    """What every output's name hash covers besides its input and seed (a memory budget may change the dtype)."""
    return {"checkpoint": checkpoint_identity(loaded.weights, loaded.metadata), "source": loaded.source,
            **({"lora": loaded.loras} if loaded.loras else {}),
            "device": device.type, "dtype": str(dtype), "max_memory": cfg.max_memory, "resize": cfg.resize,
            "sampler": {k: v for k, v in asdict(sampler_cfg).items() if k != "progress"}}


def sample_videos(cfg: DictConfig) -> list[Path]:
    """Generate one clip per input image or prompt (one image per prompt for a text-to-image model); returns
    the mp4 (png) paths."""
    images = list_images(cfg.image)[: cfg.limit] if cfg.get("image") is not None else []  # fail before loading
    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompts"))
    device = resolve_device(cfg.device)
    if cfg.max_memory is not None and device.type != "cuda":
        raise ValueError(f"max_memory={cfg.max_memory} is a budget for CUDA memory; on {device} nothing is streamed "
                         "or offloaded and no peak is measured: drop max_memory, or sample with device=cuda")
    dtype = resolve_dtype(cfg.dtype, device)
    loras = lora_args(cfg)  # fail on a bad scale before loading
    loaded = with_loras(load_for_sampling(cfg, device, dtype), loras, bool(cfg.get("lora_merge", False)))
    task = loaded.model.task
    check_inputs(cfg, task, prompts)
    if task == "text_to_image":
        return sample_images(cfg, loaded, prompts, device, dtype)
    base = video_settings(cfg, video_preset(loaded.preset), task)
    jobs = prompt_clips(prompts, base) if task == "text_to_video" else image_clips(images, base, cfg.resize)
    return _sample_clips(cfg, loaded, jobs, device, dtype)


@dataclass
class Clip:
    """One clip to generate: its output name, what the name hash and the json say about its input, its
    settings, and what it is conditioned on (an image for image-to-video, else a prompt)."""

    name: str
    record: dict
    info: dict
    settings: VideoSettings
    image: torch.Tensor | None = None
    prompt: str | None = None


def image_clips(images: list[Path], base: VideoSettings, resize: str) -> Iterator[Clip]:
    """Image-to-video: one clip per image, each read when its turn comes."""
    for path in images:
        image, settings = conditioning_image(path, base, resize)
        yield Clip(path.stem, {"image": str(path.resolve())}, {"image": str(path)}, settings, image=image)


def prompt_clips(prompts: list[str], base: VideoSettings) -> Iterator[Clip]:
    """Text-to-video: one clip per prompt."""
    for prompt in prompts:
        yield Clip(prompt_slug(prompt), {"prompt": prompt}, {"prompt": prompt}, base, prompt=prompt)


def generate(sampler, clip: Clip, cfg: SamplerConfig, seed: int) -> torch.Tensor:
    """The clip ``(1, t, 3, h, w)`` in [-1, 1]."""
    s = clip.settings
    if clip.image is not None:
        return sampler.image_to_video(clip.image.to(sampler.device), s.num_frames, fps_id=s.fps - 1,
                                      motion_bucket_id=s.motion_bucket_id, cond_aug=s.cond_aug, cfg=cfg, seed=seed)
    return sampler.text_to_video([clip.prompt], s.num_frames, s.height, s.width, fps_id=s.fps - 1,
                                 motion_bucket_id=s.motion_bucket_id, cfg=cfg, seed=seed)


def generate_long(sampler, clip: Clip, cfg: SamplerConfig, seed: int, long: LongVideo) -> Iterator[torch.Tensor]:
    """A clip longer than the model's window: pieces ``(1, t_piece, 3, h, w)`` decoded a window at a time."""
    s = clip.settings
    if clip.image is not None:
        def latents() -> torch.Tensor:
            return sampler.image_to_video_latents(clip.image.to(sampler.device), s.num_frames, fps_id=s.fps - 1,
                                                  motion_bucket_id=s.motion_bucket_id, cond_aug=s.cond_aug, cfg=cfg,
                                                  seed=seed, long=long)
    else:
        def latents() -> torch.Tensor:
            return sampler.text_to_video_latents([clip.prompt], s.num_frames, s.height, s.width, fps_id=s.fps - 1,
                                                 motion_bucket_id=s.motion_bucket_id, cfg=cfg, seed=seed, long=long)
    return sampler.video_stream(latents, s.num_frames, cfg, chunk=long.window)


def _sample_clips(cfg: DictConfig, loaded: Loaded, clips: Iterator[Clip], device: torch.device,
                  dtype: torch.dtype) -> list[Path]:
    from vldm.sampling.lean import lean_sampler

    model = loaded.model
    sampler_cfg = sampler_config(cfg, model)
    record = base_record(cfg, loaded, device, dtype, sampler_cfg)
    if model.task == "text_to_video":
        del record["resize"]  # there is no image to resize
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, planned = [], None
    for i, clip in enumerate(clips):
        settings, seed = clip.settings, cfg.seed + i
        long = long_settings(cfg, loaded.preset, settings.num_frames, model.task)
        extra = {"long": long_record(long, settings.num_frames)} if long.applies(settings.num_frames) else {}
        stem = output_stem(out_dir, clip.name, seed, {**record, **clip.record, "settings": settings.fields(), **extra},
                           ".mp4", cfg.overwrite)
        frames = long.window if long.applies(settings.num_frames) else settings.num_frames
        size = (frames, settings.height, settings.width)
        if planned is None or planned[0] != size:
            sampler, plan = lean_sampler(model, device, dtype, cfg.max_memory, *size, sampler_cfg)
            planned = (size, sampler, plan)
            log.info("memory plan for %dx%d x %d frames:\n%s", settings.width, settings.height, settings.num_frames,
                     plan.describe())
        _, sampler, plan = planned
        start = time.perf_counter()
        if extra:
            write_clip_stream(stem, (p[0] for p in generate_long(sampler, clip, sampler_cfg, seed, long)),
                              settings.fps, cfg.save_frames)
        else:
            write_clip(stem, generate(sampler, clip, sampler_cfg, seed)[0], settings.fps, cfg.save_frames)
        seconds = time.perf_counter() - start
        log.info("clip %d: %.1f s, measured peak memory %s", i + 1, seconds, format_bytes(sampler.peak_memory))
        stem.with_suffix(".json").write_text(json.dumps({
            **clip.info, "task": model.task, "checkpoint": str(cfg.checkpoint), "model": _model_name(cfg, loaded),
            "lora": loaded.loras or [], "lora_merge": bool(cfg.get("lora_merge", False)),
            "seed": seed, **settings.fields(), "fps_id": settings.fps - 1, "sampler": asdict(sampler_cfg),
            "dtype": str(dtype), "device": str(device), "memory_plan": plan.as_dict(),
            "peak_memory_bytes": sampler.peak_memory, "seconds": round(seconds, 3), **extra,
        }, indent=2, default=str))
        log.info("wrote %s", stem.with_suffix(".mp4"))
        written.append(stem.with_suffix(".mp4"))
    return written


def write_clip(stem: Path, video: torch.Tensor, fps: int, save_frames: bool) -> None:
    """``video`` ``(t, 3, h, w)`` in [-1, 1] as ``stem.mp4`` and ``stem.gif`` (+ its frames)."""
    from vldm.io.video_io import write_gif, write_mp4
    from vldm.video.pixels import tensor_to_frames

    frames = tensor_to_frames(video)
    write_mp4(stem.with_suffix(".mp4"), frames, fps=fps)
    write_gif(stem.with_suffix(".gif"), frames, fps=fps)
    if save_frames:
        write_frames(stem, frames)


def write_clip_stream(stem: Path, pieces: Iterator[torch.Tensor], fps: int, save_frames: bool) -> None:
    """Pieces ``(t_piece, 3, h, w)`` in [-1, 1] encoded into ``stem.mp4`` as they come (the GIF keeps
    the uint8 frames, a quarter of the float pixels), then ``stem.gif`` (+ its frames)."""
    from vldm.io.video_io import encode_mp4_chunks, write_gif
    from vldm.video.pixels import tensor_to_frames

    kept: list = []

    def frames() -> Iterator:
        for piece in pieces:
            chunk = tensor_to_frames(piece)
            kept.append(chunk)
            yield chunk

    stem.with_suffix(".mp4").write_bytes(encode_mp4_chunks(frames(), fps=fps))
    all_frames = np.concatenate(kept)
    write_gif(stem.with_suffix(".gif"), all_frames, fps=fps)
    if save_frames:
        write_frames(stem, all_frames)


def long_settings(cfg: DictConfig, preset: dict, num_frames: int, task: str) -> LongVideo:
    """``long.*`` of the command line, the window being the model's trained clip length (its preset)."""
    node = cfg.get("long")
    if node is None:
        return LongVideo()
    chosen = OmegaConf.to_container(node, resolve=True)
    prompts = chosen.pop("prompts", None)
    if prompts is not None and task != "text_to_video":
        raise ValueError("long.prompts (one caption per window) is for text-to-video models; this is an "
                         f"{task.replace('_', '-')} model, whose windows all take the one image")
    window = chosen.pop("window", None) or preset.get("num_frames")
    if chosen.get("method", "none") != "none" and window is None:
        raise ValueError(f"long.method={chosen['method']} generates in windows of the model's trained clip length, "
                         "and this model's preset does not say it: give long.window=FRAMES")
    if isinstance(prompts, str):
        prompts = [prompts]
    long = LongVideo(window=int(window) if window is not None else None,
                     prompts=tuple(prompts) if prompts is not None else None, **chosen)
    if long.prompts is not None:
        count = segment_count(num_frames, long)
        if len(long.prompts) != count:
            raise ValueError(f"{len(long.prompts)} long.prompts for {num_frames} frames in {count} windows (window "
                             f"{long.window}, overlap {long.overlap}): give exactly {count}, one per window")
    return long


def long_record(long: LongVideo, num_frames: int) -> dict:
    """What the json and the name hash say of a clip generated in windows."""
    return {**asdict(long), "windows": window_spans(num_frames, long.window, long.overlap)}


def _model_name(cfg: DictConfig, loaded: Loaded) -> str:
    return str(cfg.model.get("name", "")) if cfg.get("model") is not None else loaded.source


def sample_images(cfg: DictConfig, loaded: Loaded, prompts: list[str], device: torch.device,
                  dtype: torch.dtype) -> list[Path]:
    """A text-to-image model: one PNG (+ json) per prompt, prompt ``i`` with seed ``seed + i``."""
    from PIL import Image

    from vldm.sampling.lean import lean_sampler
    from vldm.video.pixels import tensor_to_frames

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
