"""Tar shards in tests: clips whose frames tell their index, and every sample of a shard folder read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FPS = 24.0


def counting_shard(path: Path, lengths: dict[str, int], size: tuple[int, int] = (24, 40)) -> Path:
    """Clips whose frame i is flat grey 8 * i (so a decoded frame tells its source index), at :data:`FPS`."""
    import webdataset as wds

    from vldm.io.video_io import encode_mp4

    with wds.TarWriter(str(path)) as writer:
        for key, n in lengths.items():
            frames = np.stack([np.full((*size, 3), 8 * i, np.uint8) for i in range(n)])
            writer.write({"__key__": key, "mp4": encode_mp4(frames, FPS), "json": {"caption": key, "fps": FPS}})
    return path


def tar_samples(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """``{shard name: {key: {ext: bytes}}}`` of every shard, failing on a key seen twice."""
    from vldm.io.tar_shards import iter_tar_samples

    out: dict[str, dict[str, Any]] = {}
    for path in sorted(shard_dir.glob("*.tar")):
        samples: dict[str, Any] = {}
        for sample in iter_tar_samples(str(path)):
            key = sample.pop("__key__")
            sample.pop("__url__")
            assert key not in samples, f"key {key} twice in {path.name}"
            samples[key] = sample
        out[path.name] = samples
    return out
