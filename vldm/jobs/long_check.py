"""Long clips from a short model: each method of :mod:`vldm.sampling.long_video` against naive chaining.

Image-to-video from held-out first frames, ``--num-frames`` frames on a model trained on fewer, scored
with :mod:`vldm.evaluation.long_metrics` (colour drift, seam jump, motion continuation). Naive
chaining decodes each window's last frame and conditions the next window on it (the next window's
first frame, a copy of that image, is dropped). A sanity row scores the real clips' first
``window`` frames looped to the same length: no drift, a hard seam at every loop. A ceiling row scores
plain samples of the trained length split into two halves: how often the model's own motion in the
second half continues that of the first, which no stitching of its windows can beat.

``python -m vldm.jobs.long_check --checkpoint runs/demo/i2v --data data/toy``

Goals: drift at most half of naive chaining's, seam jump at most 1.5, continuation at least 90%.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vldm.evaluation.long_metrics import LongScores, long_scores, window_boundaries
from vldm.sampling.long_video import LongVideo, window_spans

log = logging.getLogger(__name__)
DRIFT_FRACTION, SEAM_TARGET, CONTINUATION_TARGET = 0.5, 1.5, 0.9
METHODS: dict[str, dict] = {
    "windows": dict(method="windows"),
    "windows+freenoise": dict(method="windows", noise="freenoise"),
    "windows+anchor": dict(method="windows", anchor=True),
    "extend": dict(method="extend"),
    "extend+anchor": dict(method="extend", anchor=True),
    "extend+carried": dict(method="extend", condition="carried"),
    "extend+carried-concat": dict(method="extend", condition="carried-concat"),
    "extend+carried+anchor": dict(method="extend", condition="carried", anchor=True),
    "extend+recon": dict(method="extend", reconstruction=1.0),
    "extend+recon4": dict(method="extend", reconstruction=4.0),
    "extend+carried-concat+recon": dict(method="extend", condition="carried-concat", reconstruction=1.0),
}


@dataclass
class Row:
    """One method's scores and whether they meet the goals (``None``: the row has no goal)."""

    name: str
    scores: LongScores
    passed: bool | None


def chain_by_last_frame(sampler, image: torch.Tensor, num_frames: int, window: int, seeds: list[int],
                        **kwargs) -> torch.Tensor:
    """Naive chaining: windows of ``window`` frames, each conditioned on the previous one's last decoded frame."""
    video = sampler.image_to_video(image, window, seed=seeds, **kwargs)
    k = 1
    while video.shape[1] < num_frames:
        nxt = sampler.image_to_video(video[:, -1], window, seed=[s + 7919 * k for s in seeds], **kwargs)
        video, k = torch.cat([video, nxt[:, 1:]], dim=1), k + 1
    return video[:, :num_frames]


def chain_boundaries(num_frames: int, window: int) -> list[int]:
    return list(range(window, num_frames, window - 1))


def looped(frames: np.ndarray, num_frames: int, window: int) -> np.ndarray:
    """The first ``window`` frames of each clip ``(n, t, h, w, 3)`` repeated to ``num_frames``."""
    reps = -(-num_frames // window)
    return np.concatenate([frames[:, :window]] * reps, axis=1)[:, :num_frames]


def run_long_check(checkpoint: str | Path, data_dir: str | Path, num_frames: int = 24, overlap: int | None = None,
                   num_clips: int = 16, seed: int = 0, methods: list[str] | None = None,
                   out_dir: Path | None = None, steps: int | None = None) -> list[Row]:
    from vldm.checkpoints.load import load_run
    from vldm.data.shards import VideoClipDataset
    from vldm.sampling.pipeline import LatentDiffusionSampler
    from vldm.video.pixels import tensor_to_frames

    model, cfg = load_run(checkpoint)
    if model.task != "image_to_video":
        raise ValueError(f"{checkpoint} is a {model.task.replace('_', '-')} model: the long check samples "
                         f"image-to-video from first frames; give the i2v stage (e.g. runs/demo/i2v)")
    window = int(cfg.data.num_frames)
    if num_frames <= window:
        raise ValueError(f"--num-frames {num_frames} is not longer than the model's {window} trained frames")
    unknown = sorted(set(methods or []) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    dataset = VideoClipDataset(str(Path(data_dir) / "videos" / "val-*.tar"), num_frames=window, size=cfg.data.size,
                               repeat=False, max_samples=num_clips)
    clips = list(dataset)
    if not clips:
        raise FileNotFoundError(f"no held-out clips under {data_dir}/videos/val-*.tar")
    real = torch.stack([c["video"] for c in clips])
    sampler = LatentDiffusionSampler.from_model(model)
    kwargs = dict(fps_id=torch.tensor([c["fps_id"] for c in clips]),
                  motion_bucket_id=torch.tensor([c["motion_bucket_id"] for c in clips]), cond_aug=0.02,
                  cfg=replace(model.sampler_cfg, num_steps=steps or model.sampler_cfg.num_steps))
    seeds = [seed + i for i in range(len(clips))]
    overlap = window // 2 if overlap is None else overlap
    spans = window_spans(num_frames, window, overlap)
    videos = {"naive chaining": (tensor_to_frames(chain_by_last_frame(sampler, real[:, 0], num_frames, window,
                                                                      seeds, **kwargs)),
                                 chain_boundaries(num_frames, window))}
    for name in methods or list(METHODS):
        long = LongVideo(window=window, overlap=overlap, **METHODS[name])
        log.info("sampling %s", name)
        video = sampler.image_to_video(real[:, 0], num_frames, seed=seeds, long=long, **kwargs)
        videos[name] = (tensor_to_frames(video), window_boundaries(spans))
    chain = long_scores(*videos["naive chaining"])
    rows = [Row("naive chaining", chain, None)]
    for name, (frames, boundaries) in list(videos.items())[1:]:
        s = long_scores(frames, boundaries)
        rows.append(Row(name, s, s.drift_delta_e <= DRIFT_FRACTION * chain.drift_delta_e
                        and s.seam_jump <= SEAM_TARGET and s.continuation >= CONTINUATION_TARGET))
    if window >= 6:  # colour drift compares the first and last 3 frames
        one = tensor_to_frames(sampler.image_to_video(real[:, 0], window, seed=seeds, **kwargs))
        rows.append(Row(f"one {window}-frame sample, halves (ceiling)", long_scores(one, [window // 2]), None))
    rows.append(Row(f"real first {window} frames looped", long_scores(
        looped(tensor_to_frames(real), num_frames, window), list(range(window, num_frames, window))), None))
    if out_dir is not None:
        write_samples(out_dir, videos, fps=int(clips[0]["fps_id"]) + 1)
    return rows


def write_samples(out_dir: Path, videos: dict, fps: int) -> None:
    """The first clip of each method as ``<method>.mp4``."""
    from vldm.io.video_io import write_mp4

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (frames, _) in videos.items():
        write_mp4(out_dir / f"{name.replace(' ', '_').replace('+', '_')}.mp4", frames[0], fps=fps)


def table(rows: list[Row]) -> str:
    lines = ["| method | colour drift ΔE | seam jump | motion continuation | goals |", "|---|---|---|---|---|"]
    for r in rows:
        goal = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        lines.append(f"| {r.name} | {r.scores.drift_delta_e:.2f} | {r.scores.seam_jump:.2f} | "
                     f"{100 * r.scores.continuation:.0f}% | {goal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an image-to-video stage's run directory (runs/demo/i2v)")
    parser.add_argument("--data", default="data/toy", help="toy data root (with videos/val-*.tar)")
    parser.add_argument("--num-frames", type=int, default=24)
    parser.add_argument("--overlap", type=int, default=None, help="frames shared by windows (default: half the window)")
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's preset)")
    parser.add_argument("--methods", nargs="*", default=None, help=f"a subset of {', '.join(METHODS)}")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("--samples", default=None, help="write each method's first clip as mp4 into this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[vldm] %(message)s")
    rows = run_long_check(args.checkpoint, args.data, args.num_frames, args.overlap, args.num_clips,
                          methods=args.methods, out_dir=Path(args.samples) if args.samples else None,
                          steps=args.steps)
    overlap = "half the window" if args.overlap is None else args.overlap
    print(f"[vldm] long check: {args.num_frames} frames, overlap {overlap}, {rows[0].scores.num_clips} clips, "
          f"{args.steps or 'preset'} steps")
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps([{"name": r.name, **r.scores.as_dict(), "passed": r.passed}
                                              for r in rows], indent=2))
    return rows


if __name__ == "__main__":
    main()
