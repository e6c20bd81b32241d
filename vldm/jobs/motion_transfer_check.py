"""Do video model A's temporal layers make image model B move, keeping B's look? (Video LDM, Blattmann et
al., 2023, Sec. 4.1.2: temporal layers transferred to other fine-tuned image backbones.)

Assembles the transferred model as ``stage.init_mode=inflate stage.temporal_from=A`` does
(:func:`vldm.checkpoints.stage_weights.load_stage_weights`: A's video architecture, B's spatial
weights, autoencoder and text tower, A's temporal layers), samples the toy prompts
(:func:`~vldm.evaluation.caption_following.toy_prompts`) from it and from A with the same seeds, then measures:

- look: the colour statistics of all sampled pixels (per-channel RGB mean and standard deviation, 0-255)
  and their Euclidean distance to the same statistics of A's and of B's training stills; the transferred
  samples keep B's look when they are closer to B's stills (target);
- motion: the mean flow score (:func:`vldm.video.motion.mean_flow_magnitude`, consecutive frames) of
  the transferred samples over A's; target >= :data:`MOTION_RATIO_TARGET`. The shape's centroid speed
  (:func:`~vldm.evaluation.caption_following.read_clip`) and the direction accuracy are reported too.

``python -m vldm.jobs.motion_transfer_check --video-a runs/demo/hq --image-b runs/warm_image/image
--stills-a data/toy/images --stills-b data/toy_warm/images --out motion_transfer.json``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from vldm.evaluation.caption_following import caption_following, read_clip, toy_prompts
from vldm.video.motion import mean_flow_magnitude

MOTION_RATIO_TARGET = 0.5


def colour_statistics(pixels: Sequence[np.ndarray]) -> list[float]:
    """Per-channel mean then standard deviation, RGB 0-255, over every pixel of uint8 ``(..., 3)`` arrays."""
    if not pixels:
        raise ValueError("colour statistics of nothing: give at least one image or video")
    flat = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in pixels])
    return [*flat.mean(axis=0).tolist(), *flat.std(axis=0).tolist()]


def read_stills(folder: str | Path, limit: int = 512) -> list[np.ndarray]:
    """Up to ``limit`` RGB stills from the ``train-*.tar`` image shards (``png``) in ``folder``."""
    from vldm.io.tar_shards import iter_tar_samples

    shards = sorted(Path(folder).glob("train-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no train-*.tar image shards in {folder} (the toy data's images/ folder)")
    stills: list[np.ndarray] = []
    for shard in shards:
        for sample in iter_tar_samples(str(shard)):
            if "png" not in sample:
                continue
            bgr = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_COLOR)
            stills.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if len(stills) == limit:
                return stills
    if not stills:
        raise ValueError(f"the shards in {folder} hold no png stills")
    return stills


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def transfer_report(transferred: Sequence[np.ndarray], source: Sequence[np.ndarray], prompts: Sequence[str],
                    stills_a: Sequence[np.ndarray], stills_b: Sequence[np.ndarray]) -> dict[str, Any]:
    """The figures of the module doc for videos of the transferred model and of A (same prompts, same seeds)."""
    if len(transferred) != len(source) or not transferred:
        raise ValueError(f"need the same non-zero number of videos from both models, got {len(transferred)} and "
                         f"{len(source)}")
    stats = {"stills_a": colour_statistics(stills_a), "stills_b": colour_statistics(stills_b),
             "transferred": colour_statistics(transferred), "video_a": colour_statistics(source)}
    distances = {f"{who}_to_stills_{s}": _distance(stats[who], stats[f"stills_{s}"])
                 for who in ("transferred", "video_a") for s in ("a", "b")}
    motion = {name: float(np.mean([mean_flow_magnitude(v) for v in videos]))
              for name, videos in (("transferred", transferred), ("video_a", source))}
    speed = {name: float(np.mean([read_clip(v).speed for v in videos]))
             for name, videos in (("transferred", transferred), ("video_a", source))}
    ratio = motion["transferred"] / motion["video_a"] if motion["video_a"] > 0 else None
    keeps_look = distances["transferred_to_stills_b"] < distances["transferred_to_stills_a"]
    moves = ratio is not None and ratio >= MOTION_RATIO_TARGET
    return {
        "count": len(transferred),
        "colour_statistics": stats,
        "colour_distances": distances,
        "keeps_b_look": keeps_look,
        "motion": motion,
        "motion_ratio": ratio,
        "centroid_speed": speed,
        "direction_accuracy": {name: caption_following(videos, prompts)["direction_accuracy"]
                               for name, videos in (("transferred", transferred), ("video_a", source))},
        "targets": {"motion_ratio": MOTION_RATIO_TARGET, "colour": "closer to B's stills than to A's"},
        "passed": keeps_look and moves,
    }


def assemble(video_a: str | Path, image_b: str | Path) -> Any:
    """A's video model architecture filled as ``init_mode=inflate`` from B with ``temporal_from=A``."""
    from omegaconf import OmegaConf

    from vldm.checkpoints.load import build_model, resolve_run
    from vldm.checkpoints.stage_weights import load_stage_weights

    run_dir, weights = resolve_run(video_a)
    model = build_model(OmegaConf.load(run_dir / "config.yaml").model)
    load_stage_weights(model, image_b, "inflate", temporal_from=weights)
    return model.eval()


def run_check(video_a: str | Path, image_b: str | Path, stills_a: str | Path, stills_b: str | Path, count: int = 24,
              seed: int = 0, num_steps: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Sample the toy prompts from the transferred model and from A, and measure them (:func:`transfer_report`)."""
    import torch

    from vldm.checkpoints.load import load_run
    from vldm.jobs.t2v_check import run_settings, sample_prompts
    from vldm.sampling.pipeline import LatentDiffusionSampler

    stills = read_stills(stills_a), read_stills(stills_b)  # before sampling: a wrong folder fails at once
    settings = run_settings(video_a, count=count, seed=seed, num_steps=num_steps)
    prompts = toy_prompts(count)
    videos = {}
    with torch.no_grad():
        for name, model in (("transferred", assemble(video_a, image_b)), ("video_a", load_run(video_a)[0])):
            cfg = model.sampler_cfg if num_steps is None else replace(model.sampler_cfg, num_steps=num_steps)
            videos[name] = sample_prompts(LatentDiffusionSampler.from_model(model), prompts, settings,
                                          settings.motion_bucket_id, cfg, batch_size)
    report = transfer_report(videos["transferred"], videos["video_a"], prompts, *stills)
    return {"video_a": str(video_a), "image_b": str(image_b), "stills_a": str(stills_a), "stills_b": str(stills_b),
            "settings": {"count": count, "seed": seed, "num_steps": num_steps, "num_frames": settings.num_frames,
                         "size": [settings.height, settings.width], "fps": settings.fps,
                         "motion_bucket_id": settings.motion_bucket_id}, **report}


def _print(report: dict[str, Any]) -> None:
    stats, dist = report["colour_statistics"], report["colour_distances"]
    shown = {k: " ".join(f"{v:6.1f}" for v in s) for k, s in stats.items()}
    print(f"[vldm] motion transfer: B={report['image_b']} + temporal layers of A={report['video_a']}, "
          f"{report['count']} toy prompts")
    print("[vldm]   colour statistics (RGB mean, RGB std):")
    for name in ("stills_a", "stills_b", "video_a", "transferred"):
        print(f"[vldm]     {name:12s} {shown[name]}")
    print(f"[vldm]   transferred: distance to B's stills {dist['transferred_to_stills_b']:.1f}, to A's "
          f"{dist['transferred_to_stills_a']:.1f} -> {'keeps' if report['keeps_b_look'] else 'does NOT keep'} B's look")
    print(f"[vldm]   A's samples: distance to A's stills {dist['video_a_to_stills_a']:.1f}, to B's "
          f"{dist['video_a_to_stills_b']:.1f}")
    m, s = report["motion"], report["centroid_speed"]
    ratio = "n/a" if report["motion_ratio"] is None else f"{report['motion_ratio']:.3f}"
    print(f"[vldm]   motion (flow score): transferred {m['transferred']:.5f}, A {m['video_a']:.5f}, ratio {ratio} "
          f"(target >= {MOTION_RATIO_TARGET})")
    print(f"[vldm]   centroid speed px/frame: transferred {s['transferred']:.3f}, A {s['video_a']:.3f}; direction "
          f"accuracy: transferred {report['direction_accuracy']['transferred']:.3f}, "
          f"A {report['direction_accuracy']['video_a']:.3f}")
    print(f"[vldm]   {'PASS' if report['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point: run the check, print the figures, write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-a", required=True, help="video model A: a text-to-video run directory (e.g. runs/demo/hq)")
    parser.add_argument("--image-b", required=True, help="image model B: an image run directory or model.safetensors")
    parser.add_argument("--stills-a", required=True, help="A's training stills: a toy data images/ folder")
    parser.add_argument("--stills-b", required=True, help="B's training stills: a toy data images/ folder")
    parser.add_argument("--out", required=True, help="write the figures as JSON here")
    parser.add_argument("--count", type=int, default=24, help="how many toy prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed SEED + i")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps; default: the model's")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.count < 1 or args.batch_size < 1:
        parser.error(f"--count and --batch-size must be >= 1, got {args.count} and {args.batch_size}")
    report = run_check(args.video_a, args.image_b, args.stills_a, args.stills_b, args.count, args.seed,
                       args.num_steps, args.batch_size)
    _print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"[vldm]   wrote {out}")
    return report


if __name__ == "__main__":
    main()
