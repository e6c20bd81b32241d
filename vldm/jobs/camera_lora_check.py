"""Do camera-motion LoRAs choose the motion? (SVD paper, Sec. 4.3: LoRAs in the temporal attention of the
image-to-video model for horizontal camera motion and zooming.)

Image-to-video from the first frames of held-out camera clips (:mod:`vldm.data.toy_camera`, ``videos/val``),
the same seeds for the base model and for every LoRA, each generated clip's global motion read by optical
flow (:func:`vldm.evaluation.camera_motion.read_camera_motion`). Per LoRA:

- match: the fraction of its clips read as its motion (target >= :data:`MATCH_TARGET`, over all LoRAs);
- base match: the fraction of the base model's clips (no LoRA) read as that motion (target <=
  :data:`BASE_MATCH_TARGET`);
- magnitude along the motion's axis (flow x for pans, signed by direction; the divergence rate for
  zooms, signed likewise), at scale 0 (the base), 0.5 and 1: the half-scale value lies between the two.

``python -m vldm.jobs.camera_lora_check --base runs/demo/i2v --loras runs/demo/camera_lora --data data/toy_camera``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from vldm.evaluation.camera_motion import CameraMotionReading, read_camera_motion

MOTIONS = ("pan_left", "pan_right", "zoom_in", "zoom_out")
MATCH_TARGET, BASE_MATCH_TARGET = 0.9, 0.4
HALF_SCALE = 0.5


def along_axis(reading: CameraMotionReading, motion: str) -> float:
    """The reading's motion along ``motion``'s axis, positive in its direction (px/frame for pans, the
    relative growth per frame for zooms)."""
    value = {"pan_left": reading.pan, "pan_right": -reading.pan, "zoom_in": reading.zoom,
             "zoom_out": -reading.zoom}.get(motion)
    if value is None:
        raise ValueError(f"a camera LoRA's motion is one of {', '.join(MOTIONS)}, got {motion!r}")
    return value


@dataclass
class LoraRow:
    """One camera LoRA's scores (see the module doc)."""

    motion: str
    match: float
    base_match: float
    magnitude_base: float
    magnitude_half: float
    magnitude_full: float
    confusion: dict[str, int]

    @property
    def monotone(self) -> bool:
        """The half-scale magnitude lies strictly between the base's and the full LoRA's."""
        return self.magnitude_base < self.magnitude_half < self.magnitude_full


@dataclass
class CameraLoraReport:
    """All LoRAs' rows, pooled figures and whether the targets hold."""

    num_clips: int
    rows: list[LoraRow]

    @property
    def match(self) -> float:
        return sum(r.match for r in self.rows) / len(self.rows)

    @property
    def base_match(self) -> float:
        return sum(r.base_match for r in self.rows) / len(self.rows)

    @property
    def passed(self) -> bool:
        return self.match >= MATCH_TARGET and self.base_match <= BASE_MATCH_TARGET and all(r.monotone for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {"num_clips": self.num_clips, "match": self.match, "base_match": self.base_match,
                "passed": self.passed, "targets": {"match": MATCH_TARGET, "base_match": BASE_MATCH_TARGET},
                "rows": [{**asdict(r), "monotone": r.monotone} for r in self.rows]}


def score_motion(motion: str, base: list[CameraMotionReading], half: list[CameraMotionReading],
                 full: list[CameraMotionReading]) -> LoraRow:
    """One LoRA's row from the readings of the base's, the half-scale and the full-scale clips."""
    if not (len(base) == len(half) == len(full)) or not base:
        raise ValueError(f"need as many base, half and full readings (at least one), got {len(base)}, {len(half)}, "
                         f"{len(full)}")

    def mean(readings: list[CameraMotionReading]) -> float:
        return sum(along_axis(r, motion) for r in readings) / len(readings)

    confusion: dict[str, int] = {}
    for r in full:
        confusion[r.motion] = confusion.get(r.motion, 0) + 1
    return LoraRow(motion, sum(r.motion == motion for r in full) / len(full),
                   sum(r.motion == motion for r in base) / len(base), mean(base), mean(half), mean(full),
                   dict(sorted(confusion.items())))


def lora_files(loras: str | Path, motions: tuple[str, ...] = MOTIONS) -> dict[str, Path]:
    """``<loras>/<motion>/lora.safetensors`` for every motion, or ``FileNotFoundError`` naming the missing ones."""
    files = {m: Path(loras) / m / "lora.safetensors" for m in motions}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no camera LoRA at {', '.join(missing)}: train them first with "
                                f"`python train.py -m experiment=toy_camera_lora motion={','.join(motions)}`")
    return files


def run_camera_lora_check(base: str | Path, loras: str | Path, data_dir: str | Path, num_clips: int = 16,
                          seed: int = 0, steps: int | None = None, motion_bucket_id: int = 127) -> CameraLoraReport:
    from vldm.adapters.lora import unload
    from vldm.adapters.merge import apply_loras
    from vldm.checkpoints.load import load_run
    from vldm.data.shards import VideoClipDataset
    from vldm.sampling.pipeline import LatentDiffusionSampler

    files = lora_files(loras)
    model, cfg = load_run(base)
    if model.task != "image_to_video":
        raise ValueError(f"{base} is a {model.task.replace('_', '-')} model: camera LoRAs sit on an image-to-video "
                         f"model (e.g. runs/demo/i2v)")
    dataset = VideoClipDataset(str(Path(data_dir) / "videos" / "val-*.tar"), num_frames=int(cfg.data.num_frames),
                               size=cfg.data.size, repeat=False, filter={"static": False})
    clips = [c for _, c in zip(range(num_clips), dataset)]
    if not clips:
        raise FileNotFoundError(f"no held-out camera clips under {data_dir}/videos/val-*.tar (write them with "
                                f"`python -m vldm.jobs.toy_data --root {data_dir} --camera`)")
    images = torch.stack([c["video"][0] for c in clips])
    sampler = LatentDiffusionSampler.from_model(model)
    kwargs = dict(fps_id=torch.tensor([c["fps_id"] for c in clips]), motion_bucket_id=motion_bucket_id, cond_aug=0.02,
                  cfg=replace(model.sampler_cfg, num_steps=steps or model.sampler_cfg.num_steps),
                  seed=[seed + i for i in range(len(clips))])
    num_frames = int(cfg.data.num_frames)

    def readings() -> list[CameraMotionReading]:
        video = sampler.image_to_video(images, num_frames, **kwargs)
        return [read_camera_motion(v) for v in video]

    base_readings = readings()
    rows = []
    for motion, path in files.items():
        scaled = {}
        for scale in (HALF_SCALE, 1.0):
            apply_loras(model.network, [(path, scale)])
            try:
                scaled[scale] = readings()
            finally:
                unload(model.network)
        rows.append(score_motion(motion, base_readings, scaled[HALF_SCALE], scaled[1.0]))
    return CameraLoraReport(len(clips), rows)


def table(report: CameraLoraReport) -> str:
    lines = ["| LoRA | match | base match | along-axis motion: base / x0.5 / x1 | read as (x1) |", "|---|---|---|---|---|"]
    for r in report.rows:
        lines.append(f"| {r.motion} | {100 * r.match:.0f}% | {100 * r.base_match:.0f}% | {r.magnitude_base:.3f} / "
                     f"{r.magnitude_half:.3f} / {r.magnitude_full:.3f} | "
                     f"{', '.join(f'{k} {v}' for k, v in r.confusion.items())} |")
    lines.append(f"| all | {100 * report.match:.0f}% (target >= {100 * MATCH_TARGET:.0f}%) | {100 * report.base_match:.0f}% "
                 f"(target <= {100 * BASE_MATCH_TARGET:.0f}%) | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> CameraLoraReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the image-to-video run the LoRAs were trained on (runs/demo/i2v)")
    parser.add_argument("--loras", required=True, help="folder with <motion>/lora.safetensors (runs/demo/camera_lora)")
    parser.add_argument("--data", default="data/toy_camera", help="camera toy data root (with videos/val-*.tar)")
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's preset)")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = run_camera_lora_check(args.base, args.loras, args.data, args.num_clips, steps=args.steps)
    print(f"[vldm] camera LoRA check: {report.num_clips} held-out first frames x {len(report.rows)} LoRAs, "
          f"{args.steps or 'preset'} steps: {'PASS' if report.passed else 'FAIL'}")
    print(table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.as_dict(), indent=2))
    return report


if __name__ == "__main__":
    main()
