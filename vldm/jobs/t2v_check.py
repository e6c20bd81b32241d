"""Does the toy text-to-video model follow its captions? Colour, direction and motion bucket.

Samples the :func:`~vldm.evaluation.caption_following.toy_prompts` (not training captions) with
fixed per-prompt seeds and scores them with :func:`~vldm.evaluation.caption_following.caption_following`:
the shape's colour matches the prompt's (target >= :data:`COLOUR_TARGET`) and its centroid track
is within 45 degrees of the prompt's direction (target >= :data:`DIRECTION_TARGET`). Then the
motion-bucket check: the same prompts and seeds at a low and a high ``motion_bucket_id``, each
set's mean motion score (:func:`vldm.video.motion.mean_flow_magnitude`, the flow score curation and
evaluation share, default :class:`~vldm.video.motion.FlowProtocol`, consecutive frames) and their
ratio high / low. Consecutive frames, not curation's 2 fps sampling: on 8 fps toy clips that compares
frames 4 apart, where a fast shape has moved more than its own size and the flow loses it (its score
then falls as the speed rises).

``python -m vldm.jobs.t2v_check --checkpoint runs/demo/hq --out t2v_check.json``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vldm.evaluation.caption_following import caption_following, toy_prompts
from vldm.video.motion import FlowProtocol, mean_flow_magnitude

COLOUR_TARGET = 0.8
DIRECTION_TARGET = 0.7


@dataclass(frozen=True)
class CheckSettings:
    """What is sampled: ``count`` toy prompts, seeds ``seed + i``, at one size, clip length and fps."""

    num_frames: int
    height: int
    width: int
    fps: int
    motion_bucket_id: int = 127
    low_bucket: int = 0
    high_bucket: int = 200
    count: int = 24
    seed: int = 0
    num_steps: int | None = None  # sampler steps; None: the model's sampler_cfg

    def __post_init__(self) -> None:
        for name in ("motion_bucket_id", "low_bucket", "high_bucket"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} must be in [0, 255], got {getattr(self, name)}")
        if self.low_bucket >= self.high_bucket:
            raise ValueError(f"need low_bucket < high_bucket, got {self.low_bucket} and {self.high_bucket}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 or None (the model's), got {self.num_steps}")
        if self.fps < 1 or self.num_frames < 2 or self.count < 1:
            raise ValueError(f"need fps >= 1, num_frames >= 2 and count >= 1, got {self.fps}, {self.num_frames}, "
                             f"{self.count}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.count)]


def motion_bucket_check(low: Sequence[np.ndarray], high: Sequence[np.ndarray], low_bucket: int, high_bucket: int,
                        protocol: FlowProtocol = FlowProtocol()) -> dict[str, Any]:
    """Mean motion score of the videos sampled at ``low_bucket`` and at ``high_bucket``, and high / low."""
    if len(low) != len(high) or not low:
        raise ValueError(f"need the same non-zero number of videos per bucket, got {len(low)} and {len(high)}")
    low_motion = float(np.mean([mean_flow_magnitude(v, protocol) for v in low]))
    high_motion = float(np.mean([mean_flow_magnitude(v, protocol) for v in high]))
    return {
        "low_bucket": low_bucket,
        "high_bucket": high_bucket,
        "protocol": asdict(protocol),
        "low_motion": low_motion,
        "high_motion": high_motion,
        "ratio": high_motion / low_motion if low_motion > 0 else None,
    }


def check_report(videos: Sequence[np.ndarray], prompts: Sequence[str], low: Sequence[np.ndarray],
                 high: Sequence[np.ndarray], settings: CheckSettings) -> dict[str, Any]:
    """The JSON record: settings, caption following of ``videos``, the motion-bucket check and pass/fail."""
    following = caption_following(videos, prompts)
    buckets = motion_bucket_check(low, high, settings.low_bucket, settings.high_bucket)
    return {
        "settings": {**asdict(settings), "seeds": settings.seeds},
        **{k: following[k] for k in ("colour_accuracy", "direction_accuracy", "count")},
        "targets": {"colour_accuracy": COLOUR_TARGET, "direction_accuracy": DIRECTION_TARGET},
        "passed": following["colour_accuracy"] >= COLOUR_TARGET and following["direction_accuracy"] >= DIRECTION_TARGET,
        "motion_bucket": buckets,
        "rows": following["rows"],
    }


def run_settings(checkpoint: str | Path, **overrides: Any) -> CheckSettings:
    """The run's training size, clip length and fps (as ``sample.py`` presets them), then ``overrides``."""
    from omegaconf import OmegaConf

    from vldm.checkpoints.load import resolve_run
    from vldm.io.safe_load import file_metadata
    from vldm.sampling.run import run_preset

    run_dir, weights = resolve_run(checkpoint)
    preset = run_preset(OmegaConf.load(run_dir / "config.yaml"), file_metadata(weights), run_dir)
    if "num_frames" not in preset:
        raise ValueError(f"{run_dir} records no data.num_frames: it is not a video run")
    chosen = {k: preset[k] for k in ("num_frames", "height", "width", "fps")}
    chosen.update({k: v for k, v in overrides.items() if v is not None})
    return CheckSettings(**chosen)


def sample_prompts(sampler: Any, prompts: Sequence[str], settings: CheckSettings, motion_bucket_id: int,
                   cfg: Any, batch_size: int) -> list[np.ndarray]:
    """uint8 ``(T, H, W, 3)`` videos of ``prompts``, video ``i`` from seed ``settings.seeds[i]`` whatever the batch."""
    from vldm.video.pixels import tensor_to_frames

    seeds, videos = settings.seeds, []
    for start in range(0, len(prompts), batch_size):
        video = sampler.text_to_video(list(prompts[start : start + batch_size]), settings.num_frames, settings.height,
                                      settings.width, fps_id=settings.fps - 1, motion_bucket_id=motion_bucket_id,
                                      cfg=cfg, seed=seeds[start : start + batch_size])
        videos.extend(tensor_to_frames(video))
    return videos


def run_t2v_check(checkpoint: str | Path, settings: CheckSettings, batch_size: int = 8) -> dict[str, Any]:
    """Sample the toy prompts from a text-to-video run three times (its bucket, low, high) and score them."""
    from vldm.checkpoints.load import load_run
    from vldm.sampling.pipeline import LatentDiffusionSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, _ = load_run(checkpoint)
    if model.task != "text_to_video":
        raise ValueError(f"{checkpoint} is a {model.task} model: give a text-to-video stage's run (video or hq)")
    sampler = LatentDiffusionSampler.from_model(model)
    cfg = model.sampler_cfg if settings.num_steps is None else replace(model.sampler_cfg, num_steps=settings.num_steps)
    prompts = toy_prompts(settings.count)
    sets = [sample_prompts(sampler, prompts, settings, bucket, cfg, batch_size)
            for bucket in (settings.motion_bucket_id, settings.low_bucket, settings.high_bucket)]
    return {"checkpoint": str(checkpoint), **check_report(sets[0], prompts, sets[1], sets[2], settings)}


def _print(report: dict[str, Any]) -> None:
    s, m = report["settings"], report["motion_bucket"]
    print(f"[vldm] t2v check on {report['count']} toy prompts ({s['num_frames']} frames {s['height']}x{s['width']}, "
          f"fps {s['fps']}, motion_bucket_id {s['motion_bucket_id']}, seeds {s['seed']}..{s['seed'] + s['count'] - 1}):")
    print(f"[vldm]   colour accuracy:    {report['colour_accuracy']:.3f} (target >= {COLOUR_TARGET})")
    print(f"[vldm]   direction accuracy: {report['direction_accuracy']:.3f} (within 45 deg; target >= {DIRECTION_TARGET})")
    ratio = "n/a (no motion at the low bucket)" if m["ratio"] is None else f"{m['ratio']:.3f}"
    print(f"[vldm]   motion at bucket {m['low_bucket']}: {m['low_motion']:.5f}, at {m['high_bucket']}: "
          f"{m['high_motion']:.5f}, ratio {ratio}")
    print(f"[vldm]   {'PASS' if report['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a text-to-video stage's run directory (e.g. runs/demo/hq)")
    parser.add_argument("--out", required=True, help="write the figures and per-prompt rows as JSON here")
    parser.add_argument("--count", type=int, default=24, help="how many toy prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed SEED + i")
    parser.add_argument("--motion-bucket-id", type=int, default=127, help="the bucket of the caption-following set")
    parser.add_argument("--low-bucket", type=int, default=0)
    parser.add_argument("--high-bucket", type=int, default=200)
    parser.add_argument("--num-frames", type=int, default=None, help="default: the run's data.num_frames")
    parser.add_argument("--fps", type=int, default=None, help="default: the fps the run trained at (fps_id = fps - 1)")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps; default: the model's")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    settings = run_settings(args.checkpoint, count=args.count, seed=args.seed, motion_bucket_id=args.motion_bucket_id,
                            low_bucket=args.low_bucket, high_bucket=args.high_bucket, num_frames=args.num_frames,
                            fps=args.fps, num_steps=args.num_steps)
    report = run_t2v_check(args.checkpoint, settings, args.batch_size)
    _print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"[vldm]   wrote {out}")
    return report


if __name__ == "__main__":
    main()
