"""``bench/loader.py`` at a tiny size: both pipelines read every clip, the latent shards have the cache's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def test_loader_benchmark_reads_both_pipelines(tmp_path: Path) -> None:
    import cv2

    from bench.loader import main

    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        report = main(["--clips", "2", "--source", "96", "64", "--source-frames", "10", "--frames", "4", "--stride", "2",
                       "--size", "32", "64", "--repeats", "1", "--out", str(tmp_path / "loader.json")])
    finally:  # main() sets one thread for both
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    assert json.loads((tmp_path / "loader.json").read_text())["mp4"] == report["mp4"]
    assert report["mp4"]["clips"] == report["latent"]["clips"] == 2
    # fp16 mean + logvar of 4 x 4 x 4 x 8, a 3 x 32 x 64 uint8 frame, a 1024-d float32 embedding, + header
    payload = 2 * 2 * (4 * 4 * 4 * 8) + 3 * 32 * 64 + 4 * 1024
    assert payload < report["bytes_per_clip"]["latent"] < payload + 1024
    assert report["mp4"]["cpu_s_per_clip"] > 0 and report["latent"]["cpu_s_per_clip"] > 0
