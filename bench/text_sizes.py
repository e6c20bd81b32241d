"""Text detection rate vs glyph height and detector input size, and the text scorer's cost per clip.

The text scorer (``data_curation.scorers.text.TextScorer``, RapidOCR's DB detector) must find
burned-in subtitles, whose glyphs are 4-10 % of the frame height. This script:

1. renders moving, textured footage (multi-octave RGB value noise panning across the frame) at
   each ``--sources`` size, ``--frames`` frames at 24 fps, and burns text into it with ffmpeg's
   ``drawtext`` (``imageio_ffmpeg.get_ffmpeg_exe()``, DejaVuSans from matplotlib; white with a
   black border, one or two centred lines in the lower part of the frame, font size = the glyph
   height, ``--glyphs`` % of the frame height; 0 = no text, the false-positive row), H.264 CRF 20;
   ``--seeds`` textures and sentences per setting;
2. decodes every video at each ``--sides`` short side with ``data_curation.decode.decode_video``
   (the pipeline's decoder; never upscaled past the source) and runs the detector on the first,
   middle and last frame. A frame counts as detected when ``text_boxes >= 1`` and
   ``text_ratio > 0``; ``line`` counts frames holding a subtitle line (a wide box in the lower
   part, as ``has_subtitles`` looks for) and ``has_subtitles`` is the scorer's verdict on the clip;
3. chooses the smallest short side whose detection rate is at least ``--need`` at every glyph
   height from 4 % up, and times the text scorer per clip on the same videos: on the 128 px
   analysis frames (no stills) and on stills at the chosen side.

Reported: tables of detection rate (and glyph px) per glyph % and short side, the false-positive
rate, the chosen side, ms per clip before/after; ``bench/results/text_sizes-cpu.json``.

    python -m bench.text_sizes                           # the full grid
    python -m bench.text_sizes --seeds 1 --sources 640x360 --sides 128 256   # a quick smoke run
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

from bench.repo import RESULTS

SEED = 2026
FPS = 24
SENTENCES = (
    ("I told you we should have left earlier.", "Nobody listens to me in this house."),
    ("Where were you last night?", "I waited for hours at the station."),
    ("The storm is coming from the north.", "We need to get everyone inside now."),
    ("Do you remember the summer by the lake?", "It feels like a lifetime ago."),
)


def font_path() -> Path:
    """matplotlib's DejaVuSans.ttf (a real TrueType font that is always installed with the dev extra)."""
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def noise_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 ``(height, width, 3)`` multi-octave value noise: cells from 40 % down to 0.6 % of the height."""
    import cv2

    out = np.zeros((height, width, 3), np.float32)
    for octave in range(7):
        cell = max(2.0, height * 0.4 / 2 ** octave)
        grid = rng.random((int(height / cell) + 2, int(width / cell) + 2, 3)).astype(np.float32)
        out += 0.8 ** octave * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    return np.clip(out / max(float(out.max()), 1e-6) * 255, 0, 255).astype(np.uint8)


def panning_frames(rng: np.random.Generator, width: int, height: int, frames: int) -> np.ndarray:
    """``(frames, height, width, 3)`` crops of a larger texture moving right and down over time."""
    dx, dy = max(1, width // 100), max(1, height // 200)
    big = noise_texture(rng, height + dy * frames + 1, width + dx * frames + 1)
    return np.stack([big[t * dy : t * dy + height, t * dx : t * dx + width] for t in range(frames)])


def drawtext_filter(text_file: Path, glyph_px: int, height: int) -> str:
    """ffmpeg ``drawtext``: white text with a black border, centred, bottom at 94 % of the height."""
    border = max(1, round(glyph_px / 12))
    return (f"drawtext=fontfile={font_path()}:textfile={text_file}:fontsize={glyph_px}:fontcolor=white:"
            f"borderw={border}:bordercolor=black:line_spacing={max(1, round(glyph_px * 0.2))}:"
            f"x=(w-text_w)/2:y={round(height * 0.94)}-text_h")


def render_video(path: Path, frames: np.ndarray, text: str | None, glyph_px: int) -> None:
    """Encode ``frames`` (RGB) with ``text`` burned in by ffmpeg drawtext (None: no text), H.264 CRF 20."""
    import imageio_ffmpeg

    t, h, w = frames.shape[:3]
    vf = ["-vf", drawtext_filter(path.with_suffix(".txt"), glyph_px, h)] if text else []
    if text:
        path.with_suffix(".txt").write_text(text)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-", *vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-pix_fmt", "yuv420p", "-threads", "1", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def videos_grid(sources: list[tuple[int, int]], glyphs: list[float], seeds: int) -> list[dict[str, Any]]:
    """Every (source, glyph %, lines, seed) setting; glyph 0 (no text) once per source and seed."""
    grid = []
    for w, h in sources:
        for g in glyphs:
            for lines in ((0,) if g == 0 else (1, 2)):
                for seed in range(seeds):
                    grid.append({"width": w, "height": h, "glyph_pct": g, "lines": lines, "seed": seed})
    return grid


def _text(setting: dict[str, Any]) -> str | None:
    if setting["lines"] == 0:
        return None
    pair = SENTENCES[(setting["seed"] + int(setting["glyph_pct"] * 10)) % len(SENTENCES)]
    return "\n".join(pair[: setting["lines"]])


def measure(path: Path, setting: dict[str, Any], sides: list[int], scorer: Any) -> list[dict[str, Any]]:
    """Per short side: detection, subtitle-line and has_subtitles results on the clip's 3 chosen frames."""
    from data_curation.decode import decode_video
    from data_curation.scorers.text import frame_indices, subtitles_persist

    rows = []
    for side in sides:
        frames, _ = decode_video(path, side)
        idx = frame_indices(len(frames), scorer.frames)
        stats = [scorer.frame_stats(frames[i]) for i in idx]
        rows.append({**setting, "side": side, "decoded_short_side": int(min(frames.shape[1:3])),
                     "glyph_px": setting["glyph_pct"] / 100 * min(frames.shape[1:3]),
                     "frames": len(stats), "detected": sum(n >= 1 and r > 0 for r, n, _ in stats),
                     "line": sum(line for _, _, line in stats),
                     "has_subtitles": subtitles_persist(sum(line for _, _, line in stats), len(stats),
                                                        scorer.subtitle_min_share)})
    return rows


def time_scorer(path: Path, side: int, scorer: Any, repeats: int) -> tuple[float, float]:
    """Seconds of ``scorer.score`` on one clip: 128 px analysis frames alone, then with stills at ``side``
    every ``scorer.stills_every_s`` s (the fastest of ``repeats`` each)."""
    from data_curation.decode import decode_video
    from data_curation.records import Clip, ClipSpan

    frames, fps = decode_video(path, 128)
    sharp, _ = decode_video(path, side)
    step = max(1, round(fps * scorer.stills_every_s))
    stills = {i: sharp[i] for i in range(0, len(sharp), step)}
    plain = Clip("0" * 16, 0, path.name, ClipSpan(0, len(frames)), float(fps), frames)
    with_stills = Clip("0" * 16, 0, path.name, ClipSpan(0, len(frames)), float(fps), frames, stills=stills)
    out = []
    for clip in (plain, with_stills):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            scorer.score(clip)
            best = min(best, time.perf_counter() - t)
        out.append(best)
    return out[0], out[1]


def toy_check(count: int, scorer: Any, text_max: float) -> dict[str, Any]:
    """The demo's raw toy videos (``data_curation.synthetic``, seed 7, 32 px, 8 fps; scenes as clips,
    stills every ``scorer.stills_every_s`` s at the source size): clips kept by the text filter
    (``text_ratio <= text_max``) without and with a ``has_subtitles`` filter, per scene kind."""
    from data_curation.records import Clip, ClipSpan
    from data_curation.synthetic import RawToyConfig, generate_raw_video

    cfg = RawToyConfig(size=32)
    step = max(1, round(cfg.fps * scorer.stills_every_s))
    kinds: dict[str, dict[str, int]] = {}
    for i in range(count):
        frames, truth = generate_raw_video(7 * 1_000_003 + i, cfg)
        for j, scene in enumerate(truth["scenes"]):
            span = frames[scene["start"] : scene["end"]]
            clip = Clip("0" * 16, j, f"video_{i:04d}.mp4", ClipSpan(scene["start"], scene["end"]), float(cfg.fps), span,
                        stills={k: span[k] for k in range(0, len(span), step)})
            got = scorer.score(clip)
            k = kinds.setdefault(scene["kind"], {"clips": 0, "has_subtitles": 0, "kept_without": 0, "kept_with": 0})
            k["clips"] += 1
            k["has_subtitles"] += int(got["has_subtitles"])
            k["kept_without"] += int(got["text_ratio"] <= text_max)
            k["kept_with"] += int(got["text_ratio"] <= text_max and not got["has_subtitles"])
    total = {key: sum(v[key] for v in kinds.values()) for key in ("clips", "has_subtitles", "kept_without", "kept_with")}
    return {"videos": count, "by_kind": kinds, "all": total}


def rate_table(rows: list[dict[str, Any]], key: str) -> dict[float, dict[int, float]]:
    """``{glyph %: {side: share of frames with key}}`` over all sources, lines and seeds."""
    table: dict[float, dict[int, list[int]]] = {}
    for r in rows:
        cell = table.setdefault(r["glyph_pct"], {}).setdefault(r["side"], [0, 0])
        cell[0] += r[key]
        cell[1] += r["frames"]
    return {g: {s: a / max(b, 1) for s, (a, b) in sorted(v.items())} for g, v in sorted(table.items())}


def choose_side(table: dict[float, dict[int, float]], min_glyph: float, need: float) -> int | None:
    """The smallest short side with a rate >= ``need`` at every glyph height >= ``min_glyph`` %."""
    sides = sorted({s for v in table.values() for s in v})
    for side in sides:
        if all(v.get(side, 0.0) >= need for g, v in table.items() if g >= min_glyph):
            return side
    return None


def markdown(table: dict[float, dict[int, float]], rows: list[dict[str, Any]], sources: list[tuple[int, int]]) -> str:
    """The detection-rate table, glyph px at each short side (for the largest source) in brackets."""
    sides = sorted({s for v in table.values() for s in v})
    top = max(sources, key=lambda s: min(s))
    lines = ["| glyph % | " + " | ".join(f"{s} px" for s in sides) + " |", "|---" * (len(sides) + 1) + "|"]
    for g, v in table.items():
        cells = []
        for s in sides:
            px = g / 100 * min(s, min(top))
            cells.append(f"{v.get(s, 0.0):.2f} ({px:.0f})")
        lines.append(f"| {g:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", type=parse_size,
                        default=[parse_size(s) for s in ("320x180", "640x360", "960x540", "1280x720")])
    parser.add_argument("--glyphs", nargs="+", type=float, default=[0, 3, 4, 5, 6, 7, 8, 10],
                        help="glyph heights in %% of the frame height (0: no text)")
    parser.add_argument("--sides", nargs="+", type=int, default=[128, 160, 192, 224, 256, 288, 320, 360])
    parser.add_argument("--seeds", type=int, default=2, help="textures and sentences per setting")
    parser.add_argument("--frames", type=int, default=25, help="frames per video at 24 fps")
    parser.add_argument("--need", type=float, default=0.95, help="detection rate the chosen side must reach")
    parser.add_argument("--min-glyph", type=float, default=4.0, help="from this glyph %% up")
    parser.add_argument("--repeats", type=int, default=2, help="cost timings: the fastest of this many")
    parser.add_argument("--toy", type=int, default=64, help="demo toy videos scored for the subtitles filter check")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and OpenCV threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "text_sizes-cpu.json")
    args = parser.parse_args(argv)

    import cv2

    from data_curation.scorers.text import TextScorer

    cv2.setNumThreads(args.threads)
    scorer = TextScorer(num_threads=args.threads, stills_short_side=None)
    grid = videos_grid(args.sources, args.glyphs, args.seeds)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="text_sizes_") as tmp:
        paths = []
        for i, setting in enumerate(grid):
            rng = np.random.default_rng([SEED, i])
            path = Path(tmp) / f"video_{i:04d}.mp4"
            frames = panning_frames(rng, setting["width"], setting["height"], args.frames)
            render_video(path, frames, _text(setting), max(1, round(setting["glyph_pct"] / 100 * setting["height"])))
            paths.append(path)
        for path, setting in zip(paths, grid):
            rows.extend(measure(path, setting, args.sides, scorer))
            print(f"{path.name} {setting} done", file=sys.stderr, flush=True)
        texts = [r for r in rows if r["lines"] > 0]
        detected = rate_table(texts, "detected")
        chosen = choose_side(detected, args.min_glyph, args.need)
        cost_side = chosen if chosen is not None else max(args.sides)
        costs = [time_scorer(p, cost_side, scorer, args.repeats) for p, s in zip(paths, grid) if s["lines"] > 0]
    none = [r for r in rows if r["lines"] == 0]
    toy = toy_check(args.toy, scorer, 0.07) if args.toy > 0 else None
    result = {
        "what": "RapidOCR DB detection rate vs glyph height and detector short side (bench/text_sizes.py)",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "detected": {str(g): {str(s): r for s, r in v.items()} for g, v in detected.items()},
        "subtitle_line": {str(g): {str(s): r for s, r in v.items()} for g, v in rate_table(texts, "line").items()},
        "false_positive": {str(s): r for s, r in rate_table(none, "detected").get(0.0, {}).items()},
        "false_subtitle_line": {str(s): r for s, r in rate_table(none, "line").get(0.0, {}).items()},
        "chosen_short_side": chosen,
        "cost_ms_per_clip": {"analysis_128": 1000 * float(np.mean([a for a, _ in costs])),
                             f"stills_{cost_side}": 1000 * float(np.mean([b for _, b in costs])),
                             "clips": len(costs), "frames_per_clip": args.frames},
        "toy_subtitles_filter": toy,
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(detected, rows, args.sources))
    print("false positives (no text):", result["false_positive"])
    print("subtitle line found:", markdown(rate_table(texts, "line"), rows, args.sources), sep="\n")
    print("chosen short side:", chosen, "| cost ms/clip:", result["cost_ms_per_clip"])
    print("toy clips (text filter at 7 %) kept without / with the subtitles filter:", toy and toy["all"])
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
