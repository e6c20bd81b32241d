"""Raw toy videos with known truth: several toy scenes joined by hard cuts or fades through black.

The curation tests, the demo and the benchmark need "uncurated" input whose right answers are
known: where the cuts and fades are, which scenes are static or carry burned-in text. Each scene
is a :func:`vldm.data.toy.generate_clip` clip (kinds ``clean`` / ``static`` / ``text``); consecutive
scenes always differ in background and in shape or colour, so a cut is a real cut (the SVD
paper's Sec. 3.1 cut detection targets exactly such scene changes).

Truth layout (frames are indices into the joined video)::

    {"scenes": [{"start", "end", "kind", "caption", "has_text", "static",   # [start, end)
                 "background", "shape", "colour", "seed"}],
     "cuts": [first frame of each new scene after a hard cut],
     "fades": [[start, end], ...],   # inclusive: every dimmed or black frame of a fade
     "fps": ..., "size": ..., "num_frames": ...}

A fade is ``fade_frames`` frames of the old scene dimming towards black, ``black_frames`` black
frames, then ``fade_frames`` frames of the new scene brightening; the scenes' ``[start, end)``
spans exclude all of them.

Files (:func:`write_raw_toy_videos`): ``root/video_XXXX.mp4`` (+ ``video_XXXX.txt`` holding the
first scene's caption), and the truth **outside** the input tree, in the sibling file
``<root>_truth.json`` (see :func:`truth_path`; ``{"config", "seed", "count", "videos": {file
name: truth}, "bad_files": {file name: expected error code}}``), so a pipeline reading ``root``
never sees it. With ``bad_files``, :data:`BAD_FILES` are added: ``empty.mp4`` (0 bytes),
``truncated.mp4`` (the first 40% of the bytes of ``video_0000.mp4``), ``notes.mp4`` (text) and
``random.mkv`` (random bytes).

CLI: ``python -m data_curation.synthetic --root DIR --count N [--seed S] [--bad-files]``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vldm.data.toy import ToyVideoConfig, generate_clip
from vldm.io.video_io import encode_mp4

SCENE_KINDS: tuple[str, ...] = ("clean", "static", "text")

# bad inputs written by write_raw_toy_videos(bad_files=True) -> the error code probing them gives
BAD_FILES: dict[str, str] = {
    "empty.mp4": "empty_file",
    "truncated.mp4": "truncated",
    "notes.mp4": "not_a_video",
    "random.mkv": "not_a_video",
}


@dataclass(frozen=True)
class RawToyConfig:
    """How raw toy videos are drawn (all JSON-serialisable).

    ``size``: square frame side in px (even). ``fps``: frame rate. ``min_scenes``/``max_scenes``:
    scenes per video. ``min_scene_frames``/``max_scene_frames``: frames per scene (fade frames come
    on top). ``fade_probability``: chance that a scene boundary is a fade instead of a hard cut.
    ``fade_frames``: dimmed frames on each side of a fade, ``black_frames``: black frames in its
    middle. ``kinds``/``kind_weights``: scene kinds and their relative weights. ``crf``: H.264
    quality of the written files. ``min_speed``/``max_speed``: shape speed, px per frame.
    """

    size: int = 64
    fps: int = 8
    min_scenes: int = 1
    max_scenes: int = 3
    min_scene_frames: int = 12
    max_scene_frames: int = 24
    fade_probability: float = 0.3
    fade_frames: int = 4
    black_frames: int = 1
    kinds: tuple[str, ...] = SCENE_KINDS
    kind_weights: tuple[float, ...] = (0.5, 0.25, 0.25)
    crf: int = 18
    min_speed: float = 1.0
    max_speed: float = 3.0

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size must be even and >= 8, got {self.size}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not 1 <= self.min_scenes <= self.max_scenes:
            raise ValueError(f"need 1 <= min_scenes <= max_scenes, got {self.min_scenes}, {self.max_scenes}")
        if not 4 <= self.min_scene_frames <= self.max_scene_frames:
            raise ValueError(
                f"need 4 <= min_scene_frames <= max_scene_frames, got {self.min_scene_frames}, {self.max_scene_frames}"
            )
        if not 0.0 <= self.fade_probability <= 1.0:
            raise ValueError(f"fade_probability must be in [0, 1], got {self.fade_probability}")
        if self.fade_frames < 1 or self.black_frames < 0:
            raise ValueError(f"need fade_frames >= 1 and black_frames >= 0, got {self.fade_frames}, {self.black_frames}")
        if not self.kinds or len(self.kinds) != len(self.kind_weights):
            raise ValueError("kinds and kind_weights must be non-empty and of the same length")
        unknown = set(self.kinds) - set(SCENE_KINDS)
        if unknown:
            raise ValueError(f"unknown scene kinds {sorted(unknown)}; known: {SCENE_KINDS}")
        if min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError(f"kind_weights must be >= 0 with a positive sum, got {self.kind_weights}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= max_speed, got {self.min_speed}, {self.max_speed}")


def _differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two toy scenes differ visibly: another background, and another shape or colour."""
    return a["background"] != b["background"] and (a["shape"] != b["shape"] or a["colour"] != b["colour"])


def _dim(frames: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    out = frames.astype(np.float32) * alphas[:, None, None, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def generate_raw_video(seed: int, cfg: RawToyConfig = RawToyConfig()) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one raw toy video ``(T, size, size, 3)`` uint8 RGB and its truth (module doc)."""
    rng = np.random.default_rng([seed, 20230])
    n_scenes = int(rng.integers(cfg.min_scenes, cfg.max_scenes + 1))
    lengths = [int(rng.integers(cfg.min_scene_frames, cfg.max_scene_frames + 1)) for _ in range(n_scenes)]
    fades = [bool(rng.random() < cfg.fade_probability) for _ in range(n_scenes - 1)]
    weights = np.asarray(cfg.kind_weights, np.float64) / float(np.sum(cfg.kind_weights))
    f, black = cfg.fade_frames, cfg.black_frames

    pieces: list[np.ndarray] = []
    truth: dict[str, Any] = {"scenes": [], "cuts": [], "fades": [], "fps": cfg.fps, "size": cfg.size, "seed": int(seed)}
    previous: dict[str, Any] | None = None
    cursor = 0
    for i, length in enumerate(lengths):
        fade_in = i > 0 and fades[i - 1]
        fade_out = i < n_scenes - 1 and fades[i]
        head, tail = (f if fade_in else 0), (f if fade_out else 0)
        kind = str(cfg.kinds[int(rng.choice(len(cfg.kinds), p=weights))])
        toy_cfg = ToyVideoConfig(
            size=cfg.size, num_frames=head + length + tail, fps=cfg.fps, min_speed=cfg.min_speed, max_speed=cfg.max_speed
        )
        for _ in range(1000):
            clip_seed = int(rng.integers(2**31 - 1))
            frames, meta = generate_clip(clip_seed, kind, toy_cfg)
            if previous is None or _differs(meta, previous):
                break
        else:  # pragma: no cover - 8 backgrounds x 18 shape/colour pairs make this unreachable
            raise RuntimeError("could not draw a scene different from the previous one")
        if head:
            frames[:head] = _dim(frames[:head], np.arange(1, head + 1, dtype=np.float32) / (head + 1))
            if black:
                blank = np.zeros((black, *frames.shape[1:]), np.uint8)
                pieces.append(blank)
                cursor += black
        elif i > 0:
            truth["cuts"].append(cursor)
        if tail:
            frames[head + length :] = _dim(frames[head + length :], np.arange(tail, 0, -1, dtype=np.float32) / (tail + 1))
        if fade_in:  # the fade spans the previous scene's tail, the black frames and this head
            truth["fades"].append([cursor - black - f, cursor + head - 1])
        truth["scenes"].append({
            "start": cursor + head,
            "end": cursor + head + length,
            "kind": kind,
            "caption": meta["caption"],
            "has_text": bool(meta["has_text"]),
            "static": bool(meta["static"]),
            "background": meta["background"],
            "shape": meta["shape"],
            "colour": meta["colour"],
            "seed": clip_seed,
        })
        pieces.append(frames)
        cursor += len(frames)
        previous = meta
    video = np.concatenate(pieces)
    truth["num_frames"] = int(len(video))
    return video, truth


def truth_path(root: str | Path) -> Path:
    """Where :func:`write_raw_toy_videos` puts the truth of ``root``: the sibling ``<root>_truth.json``."""
    root = Path(root).resolve()
    return root.with_name(root.name + "_truth.json")


def load_truth(root: str | Path) -> dict[str, Any]:
    """Read the truth written next to ``root`` (``{"videos": {name: truth}, "bad_files": {...}, ...}``)."""
    return json.loads(truth_path(root).read_text())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_raw_toy_videos(
    root: str | Path,
    count: int,
    seed: int = 0,
    cfg: RawToyConfig = RawToyConfig(),
    bad_files: bool = False,
    captions: bool = True,
) -> list[Path]:
    """Write ``count`` raw toy videos (and, with ``bad_files``, the :data:`BAD_FILES`) under ``root``.

    Returns the written input paths (videos first, then bad files), sorted by name within each
    group. Deterministic in ``seed``. Truth goes to :func:`truth_path` (outside ``root``).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    videos: dict[str, Any] = {}
    first_mp4: bytes | None = None
    for i in range(count):
        frames, truth = generate_raw_video(seed * 1_000_003 + i, cfg)
        data = encode_mp4(frames, cfg.fps, cfg.crf)
        first_mp4 = first_mp4 or data
        path = root / f"video_{i:04d}.mp4"
        _atomic_write(path, data)
        if captions:
            _atomic_write(path.with_suffix(".txt"), (truth["scenes"][0]["caption"] + "\n").encode())
        videos[path.name] = truth
        paths.append(path)
    bad: dict[str, str] = {}
    if bad_files:
        if first_mp4 is None:
            frames, _ = generate_raw_video(seed * 1_000_003, cfg)
            first_mp4 = encode_mp4(frames, cfg.fps, cfg.crf)
        noise = np.random.default_rng([seed, 7]).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        contents = {
            "empty.mp4": b"",
            "truncated.mp4": first_mp4[: int(len(first_mp4) * 0.4)],
            "notes.mp4": b"These are notes, not a video.\nThe pipeline must record this file as an error.\n",
            "random.mkv": noise,
        }
        for name, data in contents.items():
            _atomic_write(root / name, data)
            paths.append(root / name)
        bad = dict(BAD_FILES)
    record = {"config": asdict(cfg), "seed": seed, "count": count, "videos": videos, "bad_files": bad}
    _atomic_write(truth_path(root), json.dumps(record, indent=1).encode())
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    """CLI: write raw toy videos and print where they and their truth went."""
    parser = argparse.ArgumentParser(description="Write raw toy videos with known cuts/fades/static/text truth.")
    parser.add_argument("--root", required=True, help="output directory for the videos")
    parser.add_argument("--count", type=int, required=True, help="number of videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-files", action="store_true", help="also write empty/truncated/text/random inputs")
    parser.add_argument("--size", type=int, default=RawToyConfig.size)
    parser.add_argument("--fps", type=int, default=RawToyConfig.fps)
    parser.add_argument("--min-scene-frames", type=int, default=RawToyConfig.min_scene_frames)
    parser.add_argument("--max-scene-frames", type=int, default=RawToyConfig.max_scene_frames)
    parser.add_argument("--no-captions", action="store_true", help="do not write .txt caption sidecars")
    args = parser.parse_args(argv)
    cfg = RawToyConfig(
        size=args.size, fps=args.fps, min_scene_frames=args.min_scene_frames, max_scene_frames=args.max_scene_frames
    )
    paths = write_raw_toy_videos(args.root, args.count, args.seed, cfg, args.bad_files, not args.no_captions)
    print(f"wrote {len(paths)} input file(s) to {args.root}; truth in {truth_path(args.root)}")
    return paths


if __name__ == "__main__":
    main()
