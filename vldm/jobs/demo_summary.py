"""Print where a staged run put its outputs: ``python -m vldm.jobs.demo_summary runs/demo [--curated data/curated]``."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("autoencoder", "image", "video", "hq", "i2v")


def curation_lines(curated: Path) -> list[str]:
    """What data_curation did (its summary.json) and where its report is."""
    summary_path = curated / "summary.json"
    if not summary_path.is_file():
        return [f"  curation    (no {summary_path})"]
    s = json.loads(summary_path.read_text())
    errors = ", ".join(f"{k} {v}" for k, v in sorted(s.get("errors", {}).items())) or "none"
    removed = ", ".join(f"{f['name']} {f['removed_first']}" for f in s.get("filters", []) if f.get("removed_first"))
    return [f"  curation    {s.get('inputs', '?')} raw inputs (errors: {errors}) -> {s.get('clips', '?')} clips, "
            f"{s.get('kept', '?')} kept (removed first by: {removed or 'none'})",
            f"              shards      {curated / 'shards'}/ (training), {curated / 'heldout'}/ "
            f"({s.get('heldout', 0)} held-out clips: validation)",
            f"              report      {curated / 'report.html'}"]


def summarise(run_root: str | Path, curated: str | Path | None = None) -> list[str]:
    root = Path(run_root)
    lines = [f"[vldm] outputs under {root}/"]
    if curated is not None:
        lines += curation_lines(Path(curated))
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


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_root", nargs="?", default="runs/demo")
    p.add_argument("--curated", default=None, help="data_curation's output directory, if the run used one")
    args = p.parse_args(argv)
    print("\n".join(summarise(args.run_root, args.curated)))


if __name__ == "__main__":
    main()
