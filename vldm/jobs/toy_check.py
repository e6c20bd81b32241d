"""Does the toy run learn? Image-to-video from held-out first frames, scored two ways.

- conditioning fidelity: PSNR of generated frame 0 against the conditioning image;
- motion: mean optical-flow magnitude of the generated clips relative to the real clips of
  the same first frames, measured with the same protocol (:mod:`vldm.video.motion`).

``python -m vldm.jobs.toy_check --checkpoint runs/demo/i2v --data data/toy``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vldm.evaluation.fidelity import psnr
from vldm.video.motion import FlowProtocol, mean_flow_magnitude

PSNR_TARGET_DB = 20.0
MOTION_TARGET_RATIO = 0.3


@dataclass
class ToyScores:
    num_clips: int
    frame0_psnr_db: float        # mean over clips
    generated_motion: float      # mean flow magnitude (fraction of the frame per frame)
    real_motion: float
    motion_ratio: float          # generated / real

    @property
    def passed(self) -> bool:
        return self.frame0_psnr_db >= PSNR_TARGET_DB and self.motion_ratio >= MOTION_TARGET_RATIO


def score_clips(generated: np.ndarray, real: np.ndarray, protocol: FlowProtocol = FlowProtocol()) -> ToyScores:
    """``generated``, ``real``: uint8 ``(n, t, h, w, 3)``; real clip ``i`` gave generated clip ``i`` its first frame."""
    if generated.shape[0] != real.shape[0] or generated.shape[2:] != real.shape[2:]:
        raise ValueError(f"generated {generated.shape} and real {real.shape} clips do not pair up")
    psnrs = [psnr(g[0].astype(np.float64), r[0].astype(np.float64), data_range=255.0) for g, r in zip(generated, real)]
    gen_motion = float(np.mean([mean_flow_magnitude(g, protocol) for g in generated]))
    real_motion = float(np.mean([mean_flow_magnitude(r, protocol) for r in real]))
    return ToyScores(len(generated), float(np.mean(np.minimum(psnrs, 100.0))), gen_motion, real_motion,
                     gen_motion / real_motion if real_motion > 0 else float("nan"))


def run_toy_check(checkpoint: str | Path, data_dir: str | Path, num_clips: int = 16, seed: int = 0) -> ToyScores:
    from vldm.checkpoints.load import load_run
    from vldm.data.shards import VideoClipDataset
    from vldm.sampling.pipeline import LatentDiffusionSampler
    from vldm.video.pixels import tensor_to_frames

    model, cfg = load_run(checkpoint)
    if model.task != "image_to_video":
        raise ValueError(f"{checkpoint} is a {model.task.replace('_', '-')} model: the toy check samples image-to-video "
                         f"from first frames; give the i2v stage (e.g. runs/demo/i2v)")
    dataset = VideoClipDataset(str(Path(data_dir) / "videos" / "val-*.tar"), num_frames=cfg.data.num_frames,
                               size=cfg.data.size, repeat=False, max_samples=num_clips)
    clips = list(dataset)
    if not clips:
        raise FileNotFoundError(f"no held-out clips under {data_dir}/videos/val-*.tar")
    real = torch.stack([c["video"] for c in clips])
    sampler = LatentDiffusionSampler.from_model(model)
    video = sampler.image_to_video(real[:, 0], real.shape[1], fps_id=torch.tensor([c["fps_id"] for c in clips]),
                                   motion_bucket_id=torch.tensor([c["motion_bucket_id"] for c in clips]),
                                   cond_aug=0.02, cfg=model.sampler_cfg, seed=seed)
    return score_clips(tensor_to_frames(video), tensor_to_frames(real))


def main(argv: list[str] | None = None) -> ToyScores:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an image-to-video stage's run directory (e.g. runs/demo/i2v)")
    parser.add_argument("--data", default="data/toy", help="toy data root (with videos/val-*.tar)")
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--out", default=None, help="write the scores as JSON here")
    args = parser.parse_args(argv)
    scores = run_toy_check(args.checkpoint, args.data, args.num_clips)
    print(f"[vldm] toy check on {scores.num_clips} held-out first frames:")
    print(f"[vldm]   frame-0 PSNR vs conditioning image: {scores.frame0_psnr_db:.2f} dB (target >= {PSNR_TARGET_DB})")
    print(f"[vldm]   motion: generated {scores.generated_motion:.4f} vs real {scores.real_motion:.4f} "
          f"= {100 * scores.motion_ratio:.0f}% (target >= {100 * MOTION_TARGET_RATIO:.0f}%)")
    print(f"[vldm]   {'PASS' if scores.passed else 'FAIL'}")
    if args.out:
        Path(args.out).write_text(json.dumps({**asdict(scores), "passed": scores.passed}, indent=2))
    return scores


if __name__ == "__main__":
    main()
