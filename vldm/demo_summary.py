"""Print where a staged run put its outputs: ``python -m vldm.demo_summary runs/demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("autoencoder", "image", "video", "hq")


def summarise(run_root: str | Path) -> list[str]:
    root = Path(run_root)
    lines = [f"[vldm] outputs under {root}/"]
    for stage in STAGES:
        d = root / stage
        if not d.is_dir():
            lines.append(f"  {stage:<11} (not run)")
            continue
        result = json.loads((d / "result.json").read_text()) if (d / "result.json").is_file() else {}
        videos = sorted((d / "samples").glob("*.mp4")) if (d / "samples").is_dir() else []
        lines.append(f"  {stage:<11} steps {result.get('global_step', '?')}, {result.get('seconds', '?')} s")
        lines.append(f"              weights     {d / 'model.safetensors'}")
        lines.append(f"              checkpoint  {d / 'checkpoints' / 'last.ckpt'}")
        lines.append(f"              config      {d / 'config.yaml'}")
        lines.append(f"              log         {d / 'logs' / 'metrics.csv'}")
        if videos:
            lines.append(f"              validation  {videos[-1]} ({len(videos)} mp4)")
    samples = sorted((root / "samples").glob("*.mp4")) if (root / "samples").is_dir() else []
    if samples:
        lines.append(f"  i2v samples {root / 'samples'}/ ({len(samples)} mp4 + gif), e.g. {samples[0]}")
    check = root / "toy_check.json"
    if check.is_file():
        s = json.loads(check.read_text())
        lines.append(f"  toy check   frame-0 PSNR {s['frame0_psnr_db']:.2f} dB, motion {100 * s['motion_ratio']:.0f}% "
                     f"of real ({'PASS' if s['passed'] else 'FAIL'})")
    return lines


if __name__ == "__main__":
    print("\n".join(summarise(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")))
