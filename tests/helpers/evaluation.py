"""Evaluation runs in tests: overrides that keep a run small and weight-free, and folders of mp4s to score."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def base_overrides(toy: Path, out: Path, cache: Path) -> list[str]:
    """``evaluate.yaml`` overrides: the toy val clips (4), ``out`` and ``cache`` dirs, no weight-backed metrics."""
    return [f"data.shards={toy}/videos/val-*.tar", "data.num_videos=4", f"out_dir={out}", f"cache_dir={cache}",
            "progress=false", "metrics.fvd.weights=null", "metrics.fid.weights=null", "metrics.clip.weights=null"]


def write_folder(folder: Path, videos: np.ndarray, fps: float = 8.0) -> Path:
    """``videos`` (n, t, h, w, 3) uint8 as ``folder/000.mp4``, ``001.mp4``, ..."""
    from vldm.io.video_io import write_mp4

    folder.mkdir(parents=True)
    for i, v in enumerate(videos):
        write_mp4(folder / f"{i:03d}.mp4", v, fps=fps)
    return folder
