"""``sample.py``'s work: image(s) in, mp4 + gif + a json of the settings out."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vldm.sampling.images import list_images, load_image
from vldm.sampling.load import load_trained

log = logging.getLogger(__name__)


def sample_videos(cfg: DictConfig) -> list[Path]:
    """Generate one clip per input image; returns the mp4 paths."""
    from vldm.data.video_io import write_gif, write_mp4
    from vldm.training.sample_writer import to_uint8

    module, train_cfg = load_trained(cfg.checkpoint, cfg.device)
    if not module.image_to_video:
        raise ValueError(f"{cfg.checkpoint} is a text-to-image model; sample.py makes videos from images")
    size = cfg.size or train_cfg.data.size
    num_frames = cfg.num_frames or train_cfg.data.num_frames
    chosen = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    sampler_cfg = replace(module.sampler_cfg, **chosen, progress=True)
    if not 0 <= cfg.motion_bucket_id <= 255:
        raise ValueError(f"motion_bucket_id must be in [0, 255], got {cfg.motion_bucket_id}")
    if cfg.fps < 1:
        raise ValueError(f"fps must be at least 1, got {cfg.fps}")
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = module.sampler(use_ema=False)  # exported weights already are the EMA weights
    written = []
    for i, path in enumerate(list_images(cfg.image)[: cfg.limit]):
        image = load_image(path, size, size)[None]
        seed = cfg.seed + i
        video = sampler.image_to_video(image, num_frames, fps_id=cfg.fps - 1, motion_bucket_id=cfg.motion_bucket_id,
                                       cond_aug=cfg.cond_aug, cfg=sampler_cfg, seed=seed)
        frames = to_uint8(video[0])
        stem = out_dir / f"{path.stem}_seed{seed}"
        write_mp4(stem.with_suffix(".mp4"), frames, fps=cfg.fps)
        write_gif(stem.with_suffix(".gif"), frames, fps=cfg.fps)
        stem.with_suffix(".json").write_text(json.dumps({
            "image": str(path), "checkpoint": str(cfg.checkpoint), "seed": seed, "num_frames": num_frames,
            "fps": cfg.fps, "motion_bucket_id": cfg.motion_bucket_id, "cond_aug": cfg.cond_aug,
            "sampler": asdict(sampler_cfg),
        }, indent=2))
        log.info("wrote %s", stem.with_suffix(".mp4"))
        written.append(stem.with_suffix(".mp4"))
    return written
