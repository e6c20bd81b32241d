"""Peak memory of curating one long video against one short video of the same kind.

Curation streams each input (``data_curation.analysis``), so its peak resident memory should not
grow with the video's length. This script writes two 1280x720, 25 fps H.264 videos of textured,
panning scenes joined by hard cuts every ``--scene-seconds`` seconds, ``--short-minutes`` and
``--long-minutes`` long, curates each alone with the real command (``python -m data_curation``,
one process, default config) in a fresh child process, and reports each run's peak RSS
(``ru_maxrss`` of that child) and wall time, and their ratio.

    python -m bench.curate_memory                       # 1 and 10 minutes
    python -m bench.curate_memory --long-minutes 3      # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.repo import RESULTS, ROOT

SIZE = (1280, 720)
FPS = 25


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A multi-octave colour noise texture (uint8 ``(H, W, 3)``): detail at every scale, like footage."""
    import cv2

    out = np.zeros((height, width, 3), np.float32)
    for octave in range(2, 8):
        cells = 2 ** octave
        small = rng.normal(0.0, 1.0, (cells, cells * width // height + 1, 3)).astype(np.float32)
        out += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) / (1.6 ** octave)
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    tint = rng.uniform(0.4, 1.0, 3).astype(np.float32)
    return np.clip(255 * out * tint, 0, 255).astype(np.uint8)


def write_video(path: Path, minutes: float, scene_seconds: float, seed: int) -> int:
    """Scenes (a texture panning across the frame) cut every ``scene_seconds``; returns the frame count."""
    import av

    w, h = SIZE
    rng = np.random.default_rng(seed)
    n = int(round(minutes * 60 * FPS))
    per_scene = int(round(scene_seconds * FPS))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for start in range(0, n, per_scene):
            count = min(per_scene, n - start)
            big = texture(rng, h + 64, w + 4 * count + 64)
            dy = int(rng.integers(0, 64))
            for i in range(count):
                frame = np.ascontiguousarray(big[dy : dy + h, 4 * i : 4 * i + w])
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def curate_child(video_dir: Path, output: Path, overrides: list[str]) -> dict[str, Any]:
    """``python -m data_curation`` on ``video_dir`` in a child process: its peak RSS, wall time, exit code."""
    cmd = [sys.executable, "-m", "data_curation", f"input={video_dir}", f"output={output}", "engine.workers=0",
           "progress=false", "report=false", *overrides]
    t = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = child.stdout.read().decode(errors="replace") if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    summary = json.loads((output / "summary.json").read_text()) if (output / "summary.json").is_file() else {}
    return {"command": " ".join(cmd), "exit_code": child.returncode, "wall_s": time.perf_counter() - t,
            "peak_rss_mib": usage.ru_maxrss / 1024, "clips": summary.get("clips"), "kept": summary.get("kept"),
            "log_tail": log.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-minutes", type=float, default=1.0)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--scene-seconds", type=float, default=12.0)
    parser.add_argument("--data", type=Path, default=None, help="keep/reuse the videos here")
    parser.add_argument("--out", type=Path, default=RESULTS / "curate-memory-cpu.json")
    parser.add_argument("overrides", nargs="*", help="configs/curate.yaml overrides for both runs")
    args = parser.parse_args(argv)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vldm-curate-memory-") as tmp:
        data = args.data or Path(tmp) / "data"
        for name, minutes in (("short", args.short_minutes), ("long", args.long_minutes)):
            video_dir = data / f"{minutes:g}min"
            video = video_dir / "video.mp4"
            if not video.is_file():
                video_dir.mkdir(parents=True, exist_ok=True)
                t = time.perf_counter()
                write_video(video, minutes, args.scene_seconds, seed=7)
                print(f"wrote {video} ({minutes:g} min) in {time.perf_counter() - t:.0f} s", flush=True)
            run = curate_child(video_dir, Path(tmp) / f"run-{name}", args.overrides)
            run.update(minutes=minutes, size_mib=video.stat().st_size / 2**20)
            runs[name] = run
            print(f"{name}: {minutes:g} min, peak RSS {run['peak_rss_mib']:.0f} MiB, {run['wall_s']:.0f} s, "
                  f"{run['clips']} clips, exit {run['exit_code']}", flush=True)
    ratio = runs["long"]["peak_rss_mib"] / runs["short"]["peak_rss_mib"]
    print(f"peak RSS long / short = {ratio:.3f}")
    record = {"command": " ".join(["python -m bench.curate_memory", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "video": {"size": SIZE, "fps": FPS, "scene_seconds": args.scene_seconds}, "runs": runs,
              "ratio_long_to_short": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
