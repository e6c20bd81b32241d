"""Cost of the curation stages against decoding alone, and the pipeline's clips per minute per core.

The SVD data curation (Blattmann et al. 2023, "Stable Video Diffusion", Sec. 3 / App. E) runs
cut detection, optical flow, OCR and CLIP over every clip; the target here is that all default
scorers together cost at most 1.5x decoding alone on 2 cores. This script:

1. renders ``--videos`` raw toy videos (``data_curation.synthetic``: 2-3 scenes of the toy
   generator joined by hard cuts or fades, with static and burned-in-text scenes) of about
   ``--seconds`` s at ``--size`` px and ``--fps``, H.264 CRF 18, into a temporary directory
   (or ``--data DIR``, reused when it holds videos made with the same settings);
2. builds the stages exactly as a curation run does (``configs/curate.yaml`` composed with Hydra,
   scorers built by ``data_curation.scoring.worker_state``) and times, per video, in this one
   process with ``--threads`` threads (cv2, torch, decord): probe, decode at the analysis size
   (``stream_frames``: the single decode the pipeline does, stills included), the windowed
   transition detection + splitting (``analyse_stream``), each
   available scorer on each clip, the report thumbnail, and the write phase per clip
   (``decode_span`` at the output size, then H.264 encoding) — the first video is run once
   untimed first, so model loading is excluded (and reported separately);
   Each stage of each video is timed ``--repeats`` times and the fastest kept (a shared machine's
   interruptions only ever add time);
3. runs the real pipeline end to end (``data_curation.pipeline.curate``, engine local with
   ``--workers`` processes) on the same videos and times it.

Reported: a table of seconds, share and ms per clip per stage; the ratio
``(probe + cuts + scorers) / decode``; clips per minute per core, single-threaded from the stage
sums and for the real pipeline (clips / wall minutes / workers); ``bench/results/curate-cpu.json``.

    python -m bench.curate                              # 12 videos, 10 s, 256 px, 24 fps
    python -m bench.curate --videos 4 --seconds 3       # a quick smoke run

The toy videos are flat-coloured scenes, which decode faster than camera footage of the same size
(fewer bits per frame), so the ratio here is, if anything, pessimistic; ``--grain SIGMA`` adds
per-pixel Gaussian noise before encoding to make decoding cost more like real footage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bench.repo import RESULTS

SCORING_STAGES = ("probe", "cuts")  # with the scorers: the cost compared with decoding alone
SEED = 2024


# ----------------------------------------------------------------------------------------- videos

def _toy_config(seconds: float, size: int, fps: int) -> Any:
    from data_curation.synthetic import RawToyConfig

    per_scene = max(4, int(round(seconds * fps / 3)))
    return RawToyConfig(size=size, fps=fps, min_scenes=3, max_scenes=3, min_scene_frames=max(4, int(per_scene * 0.9)),
                        max_scene_frames=per_scene, fade_probability=0.3, crf=18)


def _render_one(job: tuple[int, dict[str, Any], float, str]) -> dict[str, Any]:
    """Render, encode and write one raw toy video (a process-pool task)."""
    import cv2

    from data_curation.synthetic import RawToyConfig, generate_raw_video
    from vldm.io.video_io import encode_mp4

    cv2.setNumThreads(1)
    index, cfg_dict, grain, root = job
    cfg = RawToyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})
    frames, truth = generate_raw_video(SEED * 1_000_003 + index, cfg)
    if grain > 0:
        rng = np.random.default_rng([SEED, index])
        noise = rng.normal(0.0, grain, frames.shape).astype(np.float32)
        frames = np.clip(frames.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    path = Path(root) / f"video_{index:04d}.mp4"
    path.write_bytes(encode_mp4(frames, cfg.fps, crf=cfg.crf))
    path.with_suffix(".txt").write_text(truth["scenes"][0]["caption"] + "\n")
    return {"name": path.name, "frames": int(len(frames)), "cuts": truth["cuts"], "fades": truth["fades"],
            "kinds": [s["kind"] for s in truth["scenes"]]}


def make_videos(root: Path, count: int, seconds: float, size: int, fps: int, grain: float,
                workers: int) -> tuple[list[Path], dict[str, Any], float]:
    """Write (or reuse) the benchmark's videos under ``root``; returns paths, their truth, seconds."""
    cfg = _toy_config(seconds, size, fps)
    key = json.loads(json.dumps({"count": count, "config": asdict(cfg), "grain": grain, "seed": SEED}))
    stamp = root / "bench_videos.json"  # beside root/videos (the pipeline input), not in it
    t = time.perf_counter()
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        truth = json.loads(stamp.read_text())["videos"]
    else:
        videos = root / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        jobs = [(i, asdict(cfg), grain, str(videos)) for i in range(count)]
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                truth = list(pool.map(_render_one, jobs))
        else:
            truth = [_render_one(j) for j in jobs]
        stamp.write_text(json.dumps({"key": key, "videos": truth}, indent=1))
    paths = [root / "videos" / v["name"] for v in truth]
    return paths, {"config": key, "videos": truth}, time.perf_counter() - t


# ------------------------------------------------------------------------------------------ stages

def _compose(input_dir: Path, output_dir: Path, workers: int, overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from data_curation.config import compose_curate

    cfg = compose_curate([f"input={input_dir}", f"output={output_dir}", "engine=local", f"engine.workers={workers}",
                          "progress=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _set_threads(threads: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def measure_video(path: Path, source: str, settings: dict[str, Any], state: Any, scorers: list[Any],
                  output: Any, threads: int) -> dict[str, Any]:
    """Time every stage of one video as a curation run does it (single process, ``threads``).

    The run streams: decoding, transitions and scorers interleave. Here the stream is drained first
    (the decode stage, stills included), then replayed through the windowed analysis (cuts) and the
    scorers, so each stage is timed alone on the same frames.
    """

    from data_curation.analysis import Analysis, analyse_stream
    from data_curation.clip_spans import ClipCutter, clip_frame_limits
    from data_curation.decode import decode_span
    from data_curation.frame_stream import stream_frames
    from data_curation.probe import probe_video
    from data_curation.records import Clip, clip_id, video_id
    from data_curation.scoring import _thumb, stills_request
    from data_curation.shard_writer import _resize_even
    from vldm.io.video_io import encode_mp4

    times: dict[str, float] = {}
    info, times["probe"] = _timed(probe_video, path)
    fps = info.fps
    detect, stills = state.detector(fps), stills_request(scorers)
    batches, times["decode"] = _timed(lambda: list(stream_frames(
        path, settings["analysis_short_side"], fps, stills=stills, expected_frames=info.num_frames,
        timeout_s=None, num_threads=threads)))
    clips_cfg = settings["clips"]
    t = time.perf_counter()
    cutter = ClipCutter(*clip_frame_limits(fps, clips_cfg["min_seconds"], clips_cfg["max_seconds"]),
                        clips_cfg["margin_frames"])
    found = Analysis([])
    pieces = list(analyse_stream(batches, detect, cutter, result=found))
    transitions = found.transitions
    times["cuts"] = time.perf_counter() - t
    frames_shape = batches[0].frames.shape[1:3]
    vid = video_id(source)
    caption = path.with_suffix(".txt").read_text().strip() if path.with_suffix(".txt").is_file() else None
    for scorer in scorers:
        times[f"scorer:{scorer.name}"] = 0.0
    times["thumbs"] = times["write_decode"] = times["write_encode"] = 0.0
    clips = []
    for index, (span, span_frames, span_stills) in enumerate(pieces):
        clip = Clip(vid, index, source, span, float(fps), span_frames, caption, stills=span_stills)
        for scorer in scorers:
            _, dt = _timed(scorer.score, clip)
            times[f"scorer:{scorer.name}"] += dt
        _, dt = _timed(_thumb, clip.frames[len(clip.frames) // 2])
        times["thumbs"] += dt
        # the write phase of data_curation.shard_writer.render_clip, in its two parts
        out_frames, t_dec = _timed(decode_span, path, span.start, span.end, output.short_side, num_threads=threads)
        t = time.perf_counter()
        out_frames = _resize_even(np.asarray(out_frames), output.short_side)
        stride = max(1, int(round(fps / output.fps))) if output.fps is not None and output.fps < fps else 1
        out_frames = out_frames[::stride][: output.max_frames]
        encode_mp4(out_frames, fps / stride, crf=output.crf)
        t_enc = time.perf_counter() - t
        times["write_decode"] += t_dec
        times["write_encode"] += t_enc
        clips.append({"clip_id": clip_id(vid, index), "frames": span.num_frames, "write_decode": t_dec,
                      "write_encode": t_enc})
    return {"source": source, "frames": int(found.num_frames), "fps": float(fps), "width": info.width,
            "height": info.height, "bits_per_pixel": info.bits_per_pixel,
            "analysis_shape": list(frames_shape), "transitions": len(transitions),
            "clips": clips, "seconds": times}


def _fastest(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per stage (and per clip's write parts) the faster of two measurements of the same video."""
    out = dict(a, seconds={k: min(v, b["seconds"][k]) for k, v in a["seconds"].items()})
    out["clips"] = [dict(ca, write_decode=min(ca["write_decode"], cb["write_decode"]),
                         write_encode=min(ca["write_encode"], cb["write_encode"]))
                    for ca, cb in zip(a["clips"], b["clips"])]
    return out


def _sum(videos: list[dict[str, Any]], key: str) -> float:
    return float(sum(v["seconds"].get(key, 0.0) for v in videos))


def random_clip_scorer(arch: str, node: dict[str, Any]) -> Any:
    """The configured clip scorer with architecture ``arch`` and random weights: CLIP's cost, no scores.

    ``ClipScorer`` refuses to run without a weights file; with the check lifted it builds the
    architecture randomly initialised (``vldm.conditioning.open_clip_towers.build_clip`` without
    weights), so the timing is that of the real forward passes.
    """
    from data_curation.scorers.clip_scores import ClipScorer

    class RandomWeightsClipScorer(ClipScorer):
        @property
        def unavailable_reason(self) -> str:
            return ""

    keep = ("caption_similarity", "frames", "num_threads")
    return RandomWeightsClipScorer(model_name=arch, device="cpu", **{k: node[k] for k in keep if k in node})


# --------------------------------------------------------------------------------------- pipeline

def run_pipeline(cfg: dict[str, Any]) -> dict[str, Any]:
    """The real pipeline end to end on the benchmark's videos; wall time and counts."""
    from data_curation.manifest import read_manifest
    from data_curation.pipeline import curate

    notices: list[str] = []
    t = time.perf_counter()
    result = curate(cfg, notify=notices.append)
    wall = time.perf_counter() - t
    rows = read_manifest(Path(cfg["output"]) / "manifest.parquet")
    kept = [r["clip_id"] for r in rows if r["row_type"] == "clip" and r["kept"]]
    return {"wall_s": wall, "summary": result.summary, "line": result.line, "notices": notices,
            "kept_clip_ids": sorted(kept)}


# ------------------------------------------------------------------------------------------ report

def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("cv2", "decord", "av", "torch", "onnxruntime", "numpy"):
        try:
            out[name] = str(__import__(name).__version__)
        except Exception:  # noqa: BLE001 - a missing library is just not listed
            pass
    return out


def summarise(videos: list[dict[str, Any]], scorer_names: list[str], pipeline: dict[str, Any] | None,
              workers: int) -> dict[str, Any]:
    """Totals per stage, the scoring / decoding ratio and the throughput figures."""
    n_clips = sum(len(v["clips"]) for v in videos)
    stages = ["decode", "probe", "cuts", *[f"scorer:{n}" for n in scorer_names], "thumbs", "write_decode",
              "write_encode"]
    totals = {s: _sum(videos, s) for s in stages}
    all_s = sum(totals.values())
    scoring = sum(totals[s] for s in (*SCORING_STAGES, *[f"scorer:{n}" for n in scorer_names]))
    out: dict[str, Any] = {
        "videos": len(videos), "clips": n_clips, "frames": int(sum(v["frames"] for v in videos)),
        "stages": {s: {"seconds": totals[s], "share": totals[s] / all_s if all_s else 0.0,
                       "ms_per_clip": 1000 * totals[s] / max(n_clips, 1)} for s in stages},
        "scoring_s": scoring,
        "ratio_scorers_to_decode": scoring / totals["decode"],
        "ratio_decode_and_scorers_to_decode": (scoring + totals["decode"]) / totals["decode"],
        "analysis_frames_per_s_decode": sum(v["frames"] for v in videos) / totals["decode"],
        "mean_bits_per_pixel": float(np.mean([v["bits_per_pixel"] for v in videos])),
    }
    score_phase = totals["decode"] + scoring + totals["thumbs"]
    out["clips_per_min_per_core_score_phase"] = 60 * n_clips / score_phase
    if pipeline is not None:
        kept = set(pipeline["kept_clip_ids"])
        write_kept = sum(c["write_decode"] + c["write_encode"]
                         for v in videos for c in v["clips"] if c["clip_id"] in kept)
        out["kept"] = len(kept)
        out["clips_per_min_per_core_stage_sum"] = 60 * n_clips / (score_phase + write_kept)
        cores = max(1, min(workers, os.cpu_count() or 1))
        out["pipeline"] = {
            "wall_s": pipeline["wall_s"], "workers": workers, "cores_used": cores,
            "clips_per_min": 60 * n_clips / pipeline["wall_s"],
            "clips_per_min_per_core": 60 * n_clips / pipeline["wall_s"] / cores,
            "phase_seconds": pipeline["summary"].get("seconds"), "line": pipeline["line"],
            "clips_match": pipeline["summary"].get("clips") == n_clips,
        }
    return out


def format_table(summary: dict[str, Any]) -> str:
    lines = ["| stage | seconds | share | ms / clip |", "| --- | --- | --- | --- |"]
    for stage, s in summary["stages"].items():
        lines.append(f"| {stage} | {s['seconds']:.3f} | {s['share']:.1%} | {s['ms_per_clip']:.1f} |")
    lines.append(f"| **probe + cuts + scorers** | **{summary['scoring_s']:.3f}** | | |")
    r = summary["ratio_scorers_to_decode"]
    lines.append("")
    lines.append(f"(probe + cuts + scorers) / decode alone = **{r:.2f}x** (target: <= 1.5x); "
                 f"(decode + all of them) / decode = {summary['ratio_decode_and_scorers_to_decode']:.2f}x")
    lines.append(f"inputs: {summary['videos']} videos, {summary['frames']} frames, {summary['clips']} clips, "
                 f"mean {summary['mean_bits_per_pixel']:.3f} bits/pixel; decode "
                 f"{summary['analysis_frames_per_s_decode']:.0f} frames/s at the analysis size")
    lines.append(f"score phase, single-threaded: {summary['clips_per_min_per_core_score_phase']:.0f} clips/min/core")
    if "pipeline" in summary:
        p = summary["pipeline"]
        lines.append(f"stage sum incl. writing the {summary['kept']} kept clips: "
                     f"{summary['clips_per_min_per_core_stage_sum']:.0f} clips/min/core")
        lines.append(f"pipeline end to end (engine local, {p['workers']} workers): {p['wall_s']:.1f} s wall, "
                     f"{p['clips_per_min']:.0f} clips/min = {p['clips_per_min_per_core']:.0f} clips/min/core")
        lines.append(f"pipeline: {p['line']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0, help="about this long each (3 scenes)")
    parser.add_argument("--size", type=int, default=256, help="square frame side in px")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2, help="pipeline engine workers (and rendering processes)")
    parser.add_argument("--threads", type=int, default=1, help="threads for the per-stage timings")
    parser.add_argument("--repeats", type=int, default=3, help="per-stage timings: the fastest of this many")
    parser.add_argument("--grain", type=float, default=0.0, help="Gaussian noise sigma added before encoding")
    parser.add_argument("--data", type=Path, default=None, help="keep/reuse the rendered videos here")
    parser.add_argument("--clip-random", default=None, metavar="ARCH",
                        help="without CLIP weights, time the clip scorer with random ARCH weights (e.g. ViT-L-14)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end pipeline run")
    parser.add_argument("--out", type=Path, default=RESULTS / "curate-cpu.json")
    parser.add_argument("overrides", nargs="*",
                        help="configs/curate.yaml overrides, e.g. scorers.motion.method=farneback")
    args = parser.parse_args(argv)

    _set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        data = args.data or Path(tmp) / "data"
        paths, truth, t_gen = make_videos(data, args.videos, args.seconds, args.size, args.fps, args.grain,
                                          args.workers)
        print(f"{len(paths)} videos ({sum(v['frames'] for v in truth['videos'])} frames, {args.size}x{args.size}, "
              f"{args.fps} fps) ready in {t_gen:.1f} s under {data}", flush=True)
        input_dir = paths[0].parent
        cfg = _compose(input_dir, Path(tmp) / "run", args.workers, args.overrides)

        from data_curation.scoring import scoring_settings, worker_state
        from data_curation.shard_writer import OutputConfig

        settings, key = scoring_settings(cfg)
        t = time.perf_counter()
        state = worker_state(settings, key)
        output = OutputConfig(**cfg["shards"])
        for name, reason in state.unavailable.items():
            print(reason if "skipped" in reason else f"{name} scorer skipped: {reason}")
        scorers = list(state.scorers)  # a copy: the pipeline's cached worker state stays as configured
        if args.clip_random and not any(s.name == "clip" for s in scorers):
            scorers.append(random_clip_scorer(args.clip_random, cfg["scorers"].get("clip") or {}))
            print(f"clip scorer timed with random {args.clip_random} weights (timing only; not in the pipeline run)")
        measure_video(paths[0], paths[0].name, settings, state, scorers, output, args.threads)  # warm-up
        t_warm = time.perf_counter() - t
        videos: list[dict[str, Any]] = []
        for _ in range(args.repeats):  # each stage of each video: the fastest of the repeats
            run = [measure_video(path, path.name, settings, state, scorers, output, args.threads)
                   for path in paths]
            videos = run if not videos else [_fastest(a, b) for a, b in zip(videos, run)]
        scorer_names = [s.name for s in scorers]
        pipeline = None
        if not args.no_pipeline:
            print(f"stages timed; running the pipeline with {args.workers} workers ...", flush=True)
            pipeline = run_pipeline(cfg)
        summary = summarise(videos, scorer_names, pipeline, args.workers)

    table = format_table(summary)
    print(table)
    record = {
        "command": " ".join(["python -m bench.curate", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "versions": _versions()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": truth, "generation_s": t_gen, "warmup_s": t_warm,
        "scorers": scorer_names, "unavailable": state.unavailable, "clip_random": args.clip_random,
        "settings": settings, "summary": summary, "table": table, "videos": videos,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
