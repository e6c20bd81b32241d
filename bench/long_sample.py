"""Long image-to-video clips: peak memory and time against clip length, each method against one pass.

A random-weights toy image-to-video model (the smoke experiment's, or ``--checkpoint RUN_DIR``) samples
clips of 1x, 2x and 4x its window with ``long.method`` ``windows``, ``extend`` and ``extend`` with
``long.condition=carried`` (each window conditioned on its decoded first frame), the latents
decoded a window at a time into the mp4 encoder as ``sample.py`` does; the peer is ``none`` (one
pass over all frames, what sampling did before windows) at 4x. Every case runs in its own process:
peak resident set (``VmHWM``, reset after the model is built and warmed up), wall time and process CPU
time (``time.process_time``: what the sampling itself costs, whatever else runs on the machine) of the
fastest of ``--repeats`` runs. Reported: peak RSS and the 4x / 1x ratio, wall and CPU seconds, CPU seconds per window
(windows step by ``window - overlap``, so a clip of ``n`` windows costs ``n`` one-window passes) and the
deviation of each length's wall and CPU time from the straight line through its 1x and 4x times. The overlap
defaults to half the window, as sampling's does.

    python -m bench.long_sample --size 64 --window 6 --steps 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.repo import RESULTS, ROOT, compose
from bench.timing import PeakMemory, environment, write_report

CASES = [("windows", 1), ("windows", 2), ("windows", 4), ("extend", 1), ("extend", 2), ("extend", 4),
         ("extend+carried", 1), ("extend+carried", 2), ("extend+carried", 4), ("none", 4)]


def long_settings(case: str, args: argparse.Namespace):
    """The :class:`LongVideo` of a case name: a method, ``+carried`` for ``condition=carried``."""
    from vldm.sampling.long_video import LongVideo

    method, _, condition = case.partition("+")
    return LongVideo(method, args.window, args.overlap, condition=condition or "first")


def build(args: argparse.Namespace):
    from vldm.checkpoints.load import build_model, load_run
    from vldm.sampling.pipeline import LatentDiffusionSampler

    if args.checkpoint:
        model, _ = load_run(args.checkpoint)
    else:
        torch.manual_seed(0)
        cfg = compose("train", ["stage=i2v", "experiment=smoke"])
        model = build_model(cfg.model).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return LatentDiffusionSampler.from_model(model)


def run_once(sampler, method: str, frames: int, args: argparse.Namespace) -> tuple[float, float]:
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.io.video_io import encode_mp4_chunks
    from vldm.video.pixels import tensor_to_frames

    image = torch.linspace(-1, 1, 3 * args.size * args.size).reshape(1, 3, args.size, args.size)
    cfg = SamplerConfig(num_steps=args.steps, sigma_max=80.0, min_guidance=1.0, max_guidance=2.5)
    long = long_settings(method, args)
    start, cpu = time.perf_counter(), time.process_time()
    latents = lambda: sampler.image_to_video_latents(image, frames, cfg=cfg, seed=0, long=long)  # noqa: E731
    encode_mp4_chunks((tensor_to_frames(p[0]) for p in sampler.video_stream(latents, frames, cfg, args.window)),
                      fps=8)
    return time.perf_counter() - start, time.process_time() - cpu


def worker(method: str, multiple: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    sampler = build(args)
    run_once(sampler, method, args.window, args)  # warm-up at one window
    memory = PeakMemory(torch.device("cpu"))
    start_rss = memory.reset()
    runs = [run_once(sampler, method, multiple * args.window, args) for _ in range(args.repeats)]
    seconds, cpu_seconds = min(r[0] for r in runs), min(r[1] for r in runs)
    return {"method": method, "multiple": multiple, "frames": multiple * args.window, "window": args.window,
            "overlap": long_settings(method, args).overlap, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_rss": memory.peak(), "start_rss": start_rss, "note": memory.note}


def isolated(method: str, multiple: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.long_sample", "--worker", method, str(multiple), "--size", str(args.size),
           "--window", str(args.window), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.overlap is not None:
        cmd += ["--overlap", str(args.overlap)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {method} x{multiple} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    from vldm.sampling.long_video import window_spans

    by = {(r["method"], r["multiple"]): r for r in rows}
    lines = ["| method | length | windows | peak RSS | peak - start | vs 1x peak | wall s | CPU s | CPU s / window | "
             "wall off the 1x-4x line | CPU off the 1x-4x line |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        one, four = by.get((r["method"], 1)), by.get((r["method"], 4))
        mib = r["peak_rss"] / 2**20
        vs = f"{r['peak_rss'] / one['peak_rss']:.3f}x" if one else ""
        off = {key: "" for key in ("seconds", "cpu_seconds")}
        for key in off:
            if one and four:
                expected = one[key] + (four[key] - one[key]) * (r["multiple"] - 1) / 3
                off[key] = f"{100 * (r[key] / expected - 1):+.1f}%"
        windows = len(window_spans(r["frames"], r["window"], r["overlap"])) if r["method"] != "none" else 1
        lines.append(f"| {r['method']} | {r['multiple']}x ({r['frames']} frames) | {windows} | {mib:.0f} MiB | "
                     f"{(r['peak_rss'] - r['start_rss']) / 2**20:.0f} MiB | {vs} | {r['seconds']:.2f} | "
                     f"{r['cpu_seconds']:.2f} | {r['cpu_seconds'] / windows:.2f} | {off['seconds']} | "
                     f"{off['cpu_seconds']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="an i2v run directory (default: a random toy model)")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--window", type=int, default=6, help="the model's window (trained clip length)")
    p.add_argument("--overlap", type=int, default=None, help="frames shared by windows (default: half the window)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="*", default=None, help="a subset of the cases' methods (default: all)")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "MULTIPLE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return {}
    methods = {m for m, _ in CASES}
    unknown = sorted(set(args.methods or []) - methods)
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {sorted(methods)}")
    rows = [isolated(m, k, args) for m, k in CASES if not args.methods or m in args.methods]
    text = table(rows)
    print(text)
    report = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows, "table": text,
              "environment": environment(torch.device("cpu"))}
    write_report(report, args.out, RESULTS / "long-sample-cpu.json")
    return report


if __name__ == "__main__":
    main()
