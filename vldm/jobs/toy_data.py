"""Write the synthetic toy dataset (:mod:`vldm.data.toy`) as webdataset shards.

    python -m vldm.jobs.toy_data --root data/toy
    python -m vldm.jobs.toy_data --root data/toy_camera --camera   # camera motion (vldm.data.toy_camera)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from vldm.data.toy import PALETTES, ToyVideoConfig, generate_clip, still_caption
from vldm.data.toy_camera import CAMERA_MOTIONS, CameraClipConfig, generate_camera_clip
from vldm.io.video_io import encode_mp4


def _kinds_for_train(num_train: int, reject_fraction: float, rng: np.random.Generator) -> list[str]:
    n_reject = int(round(reject_fraction * num_train))
    if 3 * n_reject > num_train:
        raise ValueError(f"reject_fraction={reject_fraction} leaves no room for clean clips (3 x {n_reject} > {num_train})")
    kinds = ["static"] * n_reject + ["text"] * n_reject + ["cut"] * n_reject
    kinds += ["clean"] * (num_train - len(kinds))
    return [kinds[i] for i in rng.permutation(len(kinds))]


def _clip_seed(seed: int, split: str, index: int) -> int:
    """Train and val clip seeds never collide (val lives 5e6 seeds above train)."""
    return seed * 10_000_000 + (5_000_000 if split == "val" else 0) + index


def _png_bytes(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_shards(samples: Iterator[dict[str, Any]], pattern: Path, per_shard: int) -> list[str]:
    """Write samples into ``pattern % i`` tar shards, each via a temp file renamed when complete."""
    import webdataset as wds

    names: list[str] = []
    writer, tmp, final = None, None, None

    def close() -> None:
        if writer is not None:
            writer.close()
            os.replace(tmp, final)

    count = 0
    for sample in samples:
        if count % per_shard == 0:
            close()
            final = Path(str(pattern) % len(names))
            tmp = final.with_name(final.name + ".tmp")
            writer = wds.TarWriter(str(tmp), mtime=0.0)
            names.append(final.name)
        writer.write(sample)
        count += 1
    close()
    return names




def _matching_manifest(root: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest under ``root`` when it was written for ``request`` and its shards are all there; a stale
    one is removed (never a manifest that does not match the shards)."""
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("request") == request and _is_complete(root, old):
        return old
    path.unlink()
    return None


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    shards = manifest.get("shards", {})
    return bool(shards) and all((root / sub / name).is_file() for sub, names in shards.items() for name in names)


def write_toy_dataset(
    root: str | Path,
    cfg: ToyVideoConfig = ToyVideoConfig(),
    num_train: int = 512,
    num_val: int = 32,
    reject_fraction: float = 0.1,
    seed: int = 0,
    samples_per_shard: int = 128,
    frames_per_image_clip: int = 4,
    palette: str = "dark",
) -> dict[str, Any]:
    """Write the toy dataset as webdataset shards under ``root``; returns the manifest.

    Layout: ``videos/train-%06d.tar`` and ``videos/val-%06d.tar`` (``mp4`` + ``json``; train has
    ``reject_fraction`` each of static/text/cut clips, val is clean only, with disjoint seeds),
    ``images/train-%06d.tar`` (``png`` + ``json``: ``frames_per_image_clip`` evenly spaced frames of
    each clean train clip, one frame of each static one), ``images/val-%06d.tar`` and
    ``first_frames/val_%06d.png`` (the held-out clips' first frames) and ``manifest.json``. A matching
    existing manifest (same request, shards present) makes this a no-op. ``palette`` names the
    backgrounds (:data:`vldm.data.toy.PALETTES`); the request records it when it is not ``"dark"``, so
    a default dataset's request reads as it always has.
    """
    if num_train < 1 or num_val < 0 or samples_per_shard < 1:
        raise ValueError("need num_train >= 1, num_val >= 0 and samples_per_shard >= 1")
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {tuple(PALETTES)}, got {palette!r}")
    root = Path(root)
    request = {
        "format": 2,
        "config": asdict(cfg),
        "num_train": num_train,
        "num_val": num_val,
        "reject_fraction": reject_fraction,
        "seed": seed,
        "samples_per_shard": samples_per_shard,
        "frames_per_image_clip": frames_per_image_clip,
    }
    if palette != "dark":
        request["palette"] = palette
    if (done := _matching_manifest(root, request)) is not None:
        return done
    manifest_path = root / "manifest.json"
    start = time.perf_counter()
    kinds = _kinds_for_train(num_train, reject_fraction, np.random.default_rng(seed))
    counts: dict[str, dict[str, int]] = {"videos/train": {}, "videos/val": {}, "images/train": {}, "images/val": {}}
    image_samples: list[dict[str, Any]] = []
    val_image_samples: list[dict[str, Any]] = []

    def videos(split: str, split_kinds: list[str]) -> Iterator[dict[str, Any]]:
        for i, kind in enumerate(split_kinds):
            frames, meta = generate_clip(_clip_seed(seed, split, i), kind, cfg, palette)
            key = f"{split}_{i:06d}"
            counts[f"videos/{split}"][kind] = counts[f"videos/{split}"].get(kind, 0) + 1
            if split == "train" and kind in ("clean", "static"):
                n = 1 if kind == "static" else frames_per_image_clip
                for j in sorted(set(np.linspace(0, cfg.num_frames - 1, n).round().astype(int).tolist())):
                    image_meta = dict(meta, caption=still_caption(meta), video_caption=meta["caption"], frame=j)
                    image_samples.append({"__key__": f"{key}_f{j}", "png": _png_bytes(frames[j]), "json": image_meta})
                    counts["images/train"][kind] = counts["images/train"].get(kind, 0) + 1
            if split == "val":  # held-out first frames: image-stage validation and sample.py inputs
                image_meta = dict(meta, caption=still_caption(meta), video_caption=meta["caption"], frame=0)
                val_image_samples.append({"__key__": f"{key}_f0", "png": _png_bytes(frames[0]), "json": image_meta})
                counts["images/val"][kind] = counts["images/val"].get(kind, 0) + 1
                (tmp_root / "first_frames" / f"{key}.png").write_bytes(_png_bytes(frames[0]))
            yield {"__key__": key, "mp4": encode_mp4(frames, cfg.fps, cfg.crf), "json": meta}

    tmp_root = root / f".tmp-toy-{os.getpid()}"
    shutil.rmtree(tmp_root, ignore_errors=True)
    for sub in ("videos", "images", "first_frames"):
        (tmp_root / sub).mkdir(parents=True)
    try:
        shards: dict[str, list[str]] = {"videos": [], "images": []}
        shards["videos"] += _write_shards(videos("train", kinds), tmp_root / "videos" / "train-%06d.tar", samples_per_shard)
        shards["videos"] += _write_shards(videos("val", ["clean"] * num_val), tmp_root / "videos" / "val-%06d.tar", samples_per_shard)
        shards["images"] += _write_shards(iter(image_samples), tmp_root / "images" / "train-%06d.tar", samples_per_shard)
        shards["images"] += _write_shards(iter(val_image_samples), tmp_root / "images" / "val-%06d.tar", samples_per_shard)
        shards["first_frames"] = sorted(p.name for p in (tmp_root / "first_frames").iterdir())
        for sub, names in shards.items():
            dest = root / sub
            dest.mkdir(parents=True, exist_ok=True)
            for old_shard in [*dest.glob("*.tar"), *dest.glob("*.png")]:  # files of an earlier, different dataset
                if old_shard.name not in names:
                    old_shard.unlink()
            for name in names:
                os.replace(tmp_root / sub / name, dest / name)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    manifest = {
        "request": request,
        "counts": counts,
        "totals": {k: sum(v.values()) for k, v in counts.items()},
        "shards": shards,
        "config": asdict(cfg),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    tmp_manifest = manifest_path.with_name("manifest.json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, manifest_path)
    return manifest


def write_camera_dataset(
    root: str | Path,
    cfg: CameraClipConfig = CameraClipConfig(),
    num_train: int = 500,
    num_val: int = 50,
    seed: int = 0,
    samples_per_shard: int = 128,
) -> dict[str, Any]:
    """Write camera-motion clips (:mod:`vldm.data.toy_camera`) under ``root``; returns the manifest.

    Layout: ``videos/train-%06d.tar`` and ``videos/val-%06d.tar`` (``mp4`` + ``json``, the motion as
    ``"camera"``), the motions in turn (each split as balanced as its size allows), disjoint seeds, and
    ``manifest.json``. A matching existing manifest (same request, shards present) makes this a no-op.
    """
    if num_train < 1 or num_val < 0 or samples_per_shard < 1:
        raise ValueError("need num_train >= 1, num_val >= 0 and samples_per_shard >= 1")
    root = Path(root)
    request = {"format": "camera-1", "config": asdict(cfg), "num_train": num_train, "num_val": num_val,
               "seed": seed, "samples_per_shard": samples_per_shard}
    if (done := _matching_manifest(root, request)) is not None:
        return done
    manifest_path = root / "manifest.json"
    start = time.perf_counter()
    counts: dict[str, dict[str, int]] = {"videos/train": {}, "videos/val": {}}

    def videos(split: str, count: int) -> Iterator[dict[str, Any]]:
        for i in range(count):
            motion = CAMERA_MOTIONS[i % len(CAMERA_MOTIONS)]
            frames, meta = generate_camera_clip(_clip_seed(seed, split, i), motion, cfg)
            counts[f"videos/{split}"][motion] = counts[f"videos/{split}"].get(motion, 0) + 1
            yield {"__key__": f"{split}_{i:06d}", "mp4": encode_mp4(frames, cfg.fps, cfg.crf), "json": meta}

    tmp_root = root / f".tmp-camera-{os.getpid()}"
    shutil.rmtree(tmp_root, ignore_errors=True)
    (tmp_root / "videos").mkdir(parents=True)
    try:
        names = _write_shards(videos("train", num_train), tmp_root / "videos" / "train-%06d.tar", samples_per_shard)
        names += _write_shards(videos("val", num_val), tmp_root / "videos" / "val-%06d.tar", samples_per_shard)
        dest = root / "videos"
        dest.mkdir(parents=True, exist_ok=True)
        for old_shard in dest.glob("*.tar"):
            if old_shard.name not in names:
                old_shard.unlink()
        for name in names:
            os.replace(tmp_root / "videos" / name, dest / name)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    manifest = {"request": request, "counts": counts, "totals": {k: sum(v.values()) for k, v in counts.items()},
                "shards": {"videos": names}, "config": asdict(cfg), "seed": seed,
                "seconds": round(time.perf_counter() - start, 3)}
    tmp_manifest = manifest_path.with_name("manifest.json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, manifest_path)
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point: write the toy dataset and print a summary."""
    parser = argparse.ArgumentParser(description="Write the synthetic toy video dataset as webdataset shards.")
    parser.add_argument("--root", default="data/toy", help="output directory")
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--reject-fraction", type=float, default=0.1)
    parser.add_argument("--samples-per-shard", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--palette", choices=sorted(PALETTES), default="dark",
                        help="background palette: dark (the demo's), light or warm (same scenes, another look)")
    parser.add_argument("--camera", action="store_true",
                        help="camera motion over a textured background (pan left / right, zoom in / out, static) "
                             "instead of moving shapes; give it its own --root")
    args = parser.parse_args(argv)
    manifest_path = Path(args.root) / "manifest.json"
    before = manifest_path.stat().st_mtime_ns if manifest_path.is_file() else None
    start = time.perf_counter()
    if args.camera:
        if args.palette != "dark":
            parser.error("--palette applies to the moving-shape clips, not to --camera")
        camera_cfg = CameraClipConfig(size=args.size, num_frames=args.frames, fps=args.fps)
        manifest = write_camera_dataset(args.root, camera_cfg, args.num_train, args.num_val, args.seed,
                                        args.samples_per_shard)
    else:
        cfg = ToyVideoConfig(size=args.size, num_frames=args.frames, fps=args.fps)
        manifest = write_toy_dataset(
            args.root, cfg, args.num_train, args.num_val, args.reject_fraction, args.seed, args.samples_per_shard,
            palette=args.palette,
        )
    fresh = before != manifest_path.stat().st_mtime_ns
    status = f"wrote in {time.perf_counter() - start:.1f}s" if fresh else "already up to date"
    print(f"toy dataset at {args.root} ({status}):")
    for split, by_kind in manifest["counts"].items():
        sub, prefix = split.split("/")
        n_shards = sum(1 for name in manifest["shards"][sub] if name.startswith(prefix + "-"))
        print(f"  {split}: {sum(by_kind.values())} samples in {n_shards} shard(s) {by_kind}")
    return manifest


if __name__ == "__main__":
    main()
