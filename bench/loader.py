"""Data-loader cost per training clip at SVD size: mp4 shards vs their latent cache.

What latent caching saves off the GPU: the loader's work. One loader process reads the same clips
from mp4 shards (:class:`vldm.data.shards.VideoClipDataset`: decode, take ``--frames`` frames every
``--stride``, resize to cover ``--size``, centre-crop, to float) and from latent shards in the format
:mod:`vldm.jobs.latent_cache` writes (:class:`vldm.data.latent_dataset.LatentClipDataset`: the SD
autoencoder's 4 x h/8 x w/8 posterior mean and log-variance per frame, the first frame as uint8, a
1024-d CLIP image embedding). The latent values are random — reading cost depends on bytes, not
values, and encoding real latents at 576x1024 on a CPU takes minutes per clip. Source clips:
synthetic moving textures with per-frame grain, H.264 at ``--crf`` (grain keeps the bitrate near
real footage's; flat synthetic frames would decode unrealistically fast).

Reported per clip: wall and CPU seconds (one process; OpenCV and torch at one thread; the decoder at
its defaults), and bytes read. CPU seconds per clip times clips per second per GPU is the number of
loader cores a GPU needs.

    python -m bench.loader                                      # 8 clips, 48 frames 1280x720 -> 14 x 576x1024 every 3rd
    python -m bench.loader --clips 4 --source 1920 1080 --latent-dtype float32
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.repo import RESULTS
from bench.timing import environment, write_report


def moving_texture(seed: int, frames: int, height: int, width: int, grain: float) -> np.ndarray:
    """uint8 ``(frames, height, width, 3)``: a smooth random texture panning 4 px per frame, plus grain."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 8, width // 16 + 8, 3), dtype=np.uint8)
    big = cv2.resize(coarse, ((width // 16 + 8) * 16, (height // 16 + 8) * 16), interpolation=cv2.INTER_CUBIC)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        dx, dy = (4 * t) % (big.shape[1] - width), (2 * t) % (big.shape[0] - height)
        frame = big[dy : dy + height, dx : dx + width].astype(np.float32)
        frame += rng.normal(0.0, grain, frame.shape).astype(np.float32)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_shards(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``root/mp4/train-000000.tar`` and ``root/latent/train-000000.tar`` with the same clip keys."""
    from safetensors.torch import save

    from vldm.io.tar_shards import add_tar_member
    from vldm.io.video_io import encode_mp4

    height, width = args.size
    lh, lw = height // 8, width // 8
    dtype = getattr(torch, args.latent_dtype)
    g = torch.Generator().manual_seed(0)
    (root / "mp4").mkdir(parents=True)
    (root / "latent").mkdir(parents=True)
    sizes = {"mp4": 0, "latent": 0}
    with tarfile.open(root / "mp4" / "train-000000.tar", "w") as mp4_tar, \
            tarfile.open(root / "latent" / "train-000000.tar", "w") as latent_tar:
        for i in range(args.clips):
            key = f"clip{i:04d}"
            meta = {"caption": f"clip {i}", "fps": args.fps}
            video = encode_mp4(moving_texture(i, args.source_frames, args.source[1], args.source[0], args.grain),
                               args.fps, crf=args.crf)
            add_tar_member(mp4_tar, f"{key}.mp4", video)
            add_tar_member(mp4_tar, f"{key}.json", json.dumps(meta).encode())
            tensors = {"latents": torch.randn(args.frames, 4, lh, lw, generator=g).to(dtype),
                       "latents_logvar": torch.randn(args.frames, 4, lh, lw, generator=g).to(dtype),
                       "cond_frame": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
                       "cached.0": torch.randn(1, 1024, generator=g)}
            blob = save(tensors)
            add_tar_member(latent_tar, f"{key}.safetensors", blob)
            add_tar_member(latent_tar, f"{key}.json", json.dumps(
                {**meta, "fps_id": round(args.fps / args.stride) - 1, "motion_bucket_id": 127}).encode())
            sizes["mp4"] += len(video)
            sizes["latent"] += len(blob)
    return {k: v / args.clips for k, v in sizes.items()}


def time_pass(make_dataset, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` full passes: wall and CPU seconds per clip, and the clip count."""
    best: dict[str, float] | None = None
    for _ in range(repeats):
        dataset = make_dataset()
        wall, cpu = time.perf_counter(), time.process_time()
        n = sum(1 for _ in dataset)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if n == 0:
            raise RuntimeError("the dataset yielded no clips")
        result = {"wall_s_per_clip": wall / n, "cpu_s_per_clip": cpu / n, "clips": n}
        if best is None or result["wall_s_per_clip"] < best["wall_s_per_clip"]:
            best = result
    assert best is not None
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--source", type=int, nargs=2, default=(1280, 720), metavar=("W", "H"), help="source video size")
    p.add_argument("--source-frames", type=int, default=48)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--grain", type=float, default=3.0, help="per-frame noise std, grey levels")
    p.add_argument("--frames", type=int, default=14, help="frames per training clip")
    p.add_argument("--stride", type=int, default=3, help="take every n-th source frame")
    p.add_argument("--size", type=int, nargs=2, default=(576, 1024), metavar=("H", "W"), help="training size")
    p.add_argument("--latent-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/loader-cpu.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import cv2

    from vldm.data.latent_dataset import LatentClipDataset
    from vldm.data.shards import VideoClipDataset

    args = parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    report: dict[str, Any] = {"environment": environment(torch.device("cpu")), "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        report["bytes_per_clip"] = write_shards(root, args)
        report["write_s"] = round(time.perf_counter() - start, 2)
        report["mp4"] = time_pass(lambda: VideoClipDataset(
            str(root / "mp4"), num_frames=args.frames, size=tuple(args.size), frame_stride=args.stride,
            repeat=False, shuffle_shards=False), args.repeats)
        report["latent"] = time_pass(lambda: LatentClipDataset(
            str(root / "latent"), num_frames=args.frames, repeat=False, shuffle_shards=False), args.repeats)
    mp4, latent = report["mp4"], report["latent"]
    report["cpu_ratio"] = mp4["cpu_s_per_clip"] / latent["cpu_s_per_clip"]
    report["wall_ratio"] = mp4["wall_s_per_clip"] / latent["wall_s_per_clip"]
    h, w = args.size
    print(f"{args.clips} clips: {args.source[0]}x{args.source[1]} H.264 CRF {args.crf}, {args.source_frames} frames "
          f"-> {args.frames} every {args.stride} at {h}x{w}; latents {args.latent_dtype}")
    print("| pipeline | wall ms/clip | CPU ms/clip | bytes/clip |\n| --- | --- | --- | --- |")
    for name in ("mp4", "latent"):
        r = report[name]
        print(f"| {name} | {1e3 * r['wall_s_per_clip']:.1f} | {1e3 * r['cpu_s_per_clip']:.1f} | "
              f"{report['bytes_per_clip'][name] / 2**20:.2f} MiB |")
    print(f"| mp4 / latent | {report['wall_ratio']:.1f}x | {report['cpu_ratio']:.1f}x | |")
    write_report(report, args.out, RESULTS / "loader-cpu.json")
    return report


if __name__ == "__main__":
    main()
