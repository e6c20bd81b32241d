"""``python -m vldm.evaluation``: evaluate checkpoints (or a folder of videos) against reference clips.

For each checkpoint (:mod:`vldm.evaluation.checkpoints`): generate one video per reference clip with
fixed seeds (:mod:`vldm.evaluation.generate`), score them, and write ``metrics.json`` / ``metrics.csv``
/ plots (:mod:`vldm.evaluation.outputs`). Each rank generates and scores its share of the videos;
feature statistics are all-reduced and per-video numbers gathered (:mod:`vldm.evaluation.ranks`), so
the numbers do not depend on the number of ranks.

Metrics: weight-free ones always (motion vs the reference distribution, flicker, flow-warping error,
FRPD; frame-0 fidelity in ``mode=i2v``, caption following on toy captions in ``mode=t2v``:
:mod:`vldm.evaluation.mode_metrics`); FVD / FID / CLIP only when their weights are configured (a
configured but absent file is an error naming the file and where it is published).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vldm.data.frames import frame_size, size_record
from vldm.evaluation.protocol import EvalProtocol, count_warning

LOWER_IS_BETTER = ("fvd", "fid", "frpd", "motion_w1", "flicker", "warping_error")
HIGHER_IS_BETTER = ("clip_score", "clip_temporal", "psnr", "ssim", "caption_colour_accuracy",
                    "caption_direction_accuracy")
PER_VIDEO_FEATURES = {"psnr": "none (frame 0 vs conditioning image)", "ssim": "none (frame 0 vs conditioning image)",
                      "flicker": "none (4x4 luma block means)", "warping_error": "flow-dis (Lai et al. 2018)",
                      "caption_colour_accuracy": "none (toy shape colour vs the caption's)",
                      "caption_direction_accuracy": "none (toy shape centroid track vs the caption's direction)"}


@dataclass
class MetricSuite:
    """The metrics one evaluation computes, with their networks built once."""

    fvd: Any = None
    fid: Any = None
    frpd: Any = None
    clip: Any = None
    motion: dict[str, Any] | None = None   # {"protocol": FlowProtocol, "sample_fps": float}
    fidelity: bool = True
    flicker: bool = True
    warping: bool = True
    caption_following: bool = False
    skipped: dict[str, str] = field(default_factory=dict)

    def for_mode(self, mode: str, captions: Sequence[str]) -> MetricSuite:
        """This suite less the metrics ``mode`` does not compute on ``captions`` (named in ``skipped``)."""
        from vldm.evaluation.mode_metrics import CAPTION_METRICS, mode_skips

        skips = mode_skips(mode, captions)
        return replace(self, fidelity=self.fidelity and "psnr" not in skips,
                       caption_following=mode == "t2v" and not any(m in skips for m in CAPTION_METRICS),
                       skipped={**self.skipped, **skips})

    def distribution_nets(self) -> dict[str, Any]:
        return {k: v for k, v in (("fvd", self.fvd), ("fid", self.fid), ("frpd", self.frpd)) if v is not None}


def build_metrics(cfg: DictConfig, device: str, say: Callable[[str], None] = print) -> MetricSuite:
    """Networks for the configured metrics. A weights path that is set but absent raises
    FileNotFoundError (naming the file and its published source); an unset one skips the metric."""
    from vldm.video.motion import FlowProtocol

    m = cfg.metrics
    suite = MetricSuite(fidelity=bool(m.fidelity), flicker=bool(m.flicker), warping=bool(m.warping))
    if m.fvd.weights:
        from vldm.evaluation.feature_nets import I3DFeatures

        suite.fvd = I3DFeatures(str(m.fvd.weights), batch_size=int(m.fvd.batch_size), device=device,
                                num_frames=int(m.fvd.num_frames), resolution=int(m.fvd.resolution),
                                config_key="metrics.fvd.weights")
    else:
        suite.skipped["fvd"] = ("metrics.fvd.weights not set (StyleGAN-V i3d_torchscript.pt; "
                                "set VLDM_I3D or metrics.fvd.weights)")
    if m.fid.weights:
        from vldm.evaluation.feature_nets import InceptionFeatures

        suite.fid = InceptionFeatures(str(m.fid.weights), batch_size=int(m.fid.batch_size), device=device,
                                      resolution=int(m.fid.resolution), config_key="metrics.fid.weights")
    else:
        suite.skipped["fid"] = ("metrics.fid.weights not set (NVlabs inception-2015-12-05.pt; "
                                "set VLDM_INCEPTION or metrics.fid.weights)")
    if m.clip.weights or m.clip.model_config:
        from vldm.evaluation.clip_metrics import ClipVideoMetrics

        model_config = OmegaConf.to_container(m.clip.model_config, resolve=True) if m.clip.model_config else None
        suite.clip = ClipVideoMetrics(str(m.clip.model_name), str(m.clip.weights) if m.clip.weights else None,
                                      model_config, device=device, config_key="metrics.clip.weights")
    else:
        suite.skipped["clip_score"] = suite.skipped["clip_temporal"] = (
            f"metrics.clip.weights not set (open_clip {m.clip.model_name} weights; set VLDM_CLIP_EVAL_WEIGHTS "
            f"or metrics.clip.weights)")
    if m.frpd.enabled:
        from vldm.evaluation.random_features import RandomProjectionFeatures

        suite.frpd = RandomProjectionFeatures(dim=int(m.frpd.dim), num_frames=int(m.frpd.num_frames),
                                              size=int(m.frpd.size), seed=int(m.frpd.seed))
    if m.motion.enabled:
        suite.motion = {"protocol": FlowProtocol(method=str(m.motion.method), short_side=int(m.motion.short_side)),
                        "sample_fps": float(m.motion.sample_fps)}
    for name in ("fvd", "fid", "clip_score"):
        if name in suite.skipped:
            say(f"[vldm] eval: {name.replace('_score', '')} skipped: {suite.skipped[name]}")
    return suite


# ------------------------------------------------------------------------------------- inputs
def _fit_to(net: Any, videos: np.ndarray) -> np.ndarray:
    """Frames / resolution a pretrained feature network's protocol takes (first ``num_frames``, resized)."""
    from vldm.evaluation.feature_nets import resize_videos

    if getattr(net, "accepts_any_size", False):
        return videos
    if net.num_frames is not None:
        videos = videos[:, :net.num_frames]
    return resize_videos(videos, net.resolution)


def _local_stats(net: Any, videos: np.ndarray):
    from vldm.evaluation.reference import feature_stats

    return feature_stats(net, _fit_to(net, videos)) if len(videos) else None


def check_frames(suite: MetricSuite, num_frames: int) -> None:
    """Fail before generating when the clips are too short for a metric."""
    if suite.fvd is not None and num_frames < suite.fvd.num_frames:
        raise ValueError(f"FVD needs {suite.fvd.num_frames} frames per video (StyleGAN-V protocol) but the clips "
                         f"have {num_frames}: set data.num_frames={suite.fvd.num_frames} (the model then generates "
                         f"longer clips than it trained on) or metrics.fvd.num_frames={num_frames} (not comparable to "
                         f"published FVD), or unset metrics.fvd.weights")
    if num_frames < 3:
        raise ValueError(f"evaluation needs at least 3 frames per video (flicker takes second differences, motion and "
                         f"warping frame pairs), the clips have {num_frames}")


# ------------------------------------------------------------------------------------ scoring
def per_video_scores(suite: MetricSuite, videos: np.ndarray, indices: list[int], clips: Any, fps: list[float],
                     paired: bool) -> dict[str, np.ndarray]:
    """This rank's per-video numbers (``(len(indices),)`` each). ``paired``: video ``k`` was made from
    reference clip ``indices[k]`` (fidelity and CLIP score need that)."""
    from vldm.evaluation import temporal

    out: dict[str, np.ndarray] = {}
    if not len(videos):
        return out
    if suite.fidelity and paired:
        out.update(temporal.conditioning_fidelity(videos, clips.first_frames[indices]))
    if suite.caption_following and paired:
        from vldm.evaluation.mode_metrics import caption_scores

        out.update(caption_scores(videos, [clips.captions[i] for i in indices]))
    if suite.motion is not None:
        out["motion"] = temporal.motion_scores(videos, fps, suite.motion["protocol"], suite.motion["sample_fps"])
    if suite.flicker:
        out["flicker"] = temporal.flicker(videos)
    if suite.warping:
        out["warping_error"] = temporal.warping_error(videos)
    if suite.clip is not None:
        if paired:
            out["clip_score"] = suite.clip.clip_score(videos, [clips.captions[i] for i in indices])
        out["clip_temporal"] = suite.clip.temporal_consistency(videos)
    return out


def gather_per_video(indices: list[int], scores: dict[str, np.ndarray]) -> tuple[list[int], dict[str, np.ndarray]]:
    """All ranks' per-video numbers, in video order."""
    from vldm.evaluation.ranks import all_gather_object_list

    rows = all_gather_object_list([(i, {k: float(v[j]) for k, v in scores.items()}) for j, i in enumerate(indices)])
    rows.sort(key=lambda row: row[0])
    keys = list(rows[0][1]) if rows else []
    return [r[0] for r in rows], {k: np.array([r[1][k] for r in rows], dtype=np.float64) for k in keys}


class ReferenceCache:
    """Reference clips per (frames, size), their feature statistics and motion scores, computed once."""

    def __init__(self, shards: Any, num_videos: int, cache_dir: str | None, suite: MetricSuite,
                 say: Callable[[str], None], rank: int, world: int) -> None:
        self.shards, self.num_videos, self.cache_dir, self.suite = shards, num_videos, cache_dir, suite
        self.say, self.rank, self.world = say, rank, world
        self._clips: dict[tuple[int, tuple[int, int]], Any] = {}
        self._stats: dict[tuple, Any] = {}
        self._motion: dict[tuple[int, int], np.ndarray] = {}

    def clips(self, num_frames: int, size: tuple[int, int]):
        from vldm.evaluation.reference import load_reference_clips

        key = (num_frames, size)
        if key not in self._clips:
            clips = load_reference_clips(self.shards, self.num_videos, num_frames, size)
            if len(clips) < self.num_videos:
                self.say(f"[vldm] eval: only {len(clips)} reference clips of >= {num_frames} frames "
                         f"(data.num_videos={self.num_videos})")
            self._clips[key] = clips
        return self._clips[key]

    def protocol(self, metric: str, net: Any, clips: Any) -> EvalProtocol:
        frames = net.num_frames if net.num_frames is not None else clips.num_frames
        return EvalProtocol(metric, net.name, len(clips), int(frames), int(net.resolution), clips.mean_fps,
                            "reference", {"clip_frames": clips.num_frames, "clip_resolution": clips.resolution,
                                          "dataset": clips.fingerprint})

    def stats(self, metric: str, net: Any, clips: Any):
        from vldm.evaluation.reference import reference_stats

        key = (metric, clips.num_frames, clips.hw)
        if key not in self._stats:
            proto = self.protocol(metric, net, clips)
            fitted = replace(clips, videos=_fit_to(net, clips.videos))  # as the generated videos are fed
            self._stats[key] = reference_stats(net, fitted, proto, self.cache_dir, self.say, self.rank, self.world)
        return self._stats[key]

    def motion(self, clips: Any) -> np.ndarray:
        from vldm.evaluation.ranks import shard_indices

        key = (clips.num_frames, clips.hw)
        if key not in self._motion:
            mine = shard_indices(len(clips), self.rank, self.world)
            local = per_video_scores(MetricSuite(motion=self.suite.motion, fidelity=False, flicker=False,
                                                 warping=False), clips.videos[mine], mine, clips,
                                     [clips.fps[i] for i in mine], paired=False)
            _, gathered = gather_per_video(mine, local)
            self._motion[key] = gathered["motion"]
        return self._motion[key]


def score(suite: MetricSuite, refs: ReferenceCache, clips: Any, indices: list[int], videos: np.ndarray,
          fps: list[float], paired: bool, seeds: str, extra: dict[str, Any]) -> tuple[dict, dict]:
    """``(metrics, per_video)`` over the videos of all ranks (this rank holds ``videos``, made for
    reference clips ``indices`` at frame rates ``fps``).

    ``metrics[name] = {"value", "std", "higher_is_better", "protocol", "warning"}``.
    """
    from vldm.evaluation.frechet import FeatureStats, frechet_from_stats
    from vldm.evaluation.ranks import all_gather_object_list, all_reduce_stats
    from vldm.evaluation.temporal import motion_distance

    order, per_video = gather_per_video(indices, per_video_scores(suite, videos, indices, clips, fps, paired))
    n = len(order)
    fps_all = float(np.mean(all_gather_object_list(list(fps))))
    t, res = int(videos.shape[1]), size_record(videos.shape[2:4])
    metrics: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float, net_name: str, frames: int, resolution: int | list[int],
            std: float | None = None, more: dict[str, Any] | None = None) -> None:
        proto = EvalProtocol(name, net_name, n, int(frames), size_record(resolution), fps_all, seeds,
                             {**extra, **(more or {})})
        better = True if name in HIGHER_IS_BETTER else False if name in LOWER_IS_BETTER else None
        warning = count_warning("motion" if name.startswith("motion") else name, n)
        metrics[name] = {"value": float(value), "std": None if std is None else float(std),
                         "higher_is_better": better, "protocol": proto.as_dict(), "warning": warning}

    for name, net in suite.distribution_nets().items():
        local = _local_stats(net, videos)
        stats = all_reduce_stats(local if local is not None else FeatureStats.empty(net.dim))
        ref = refs.stats(name, net, clips)
        frames = net.num_frames if net.num_frames is not None else t
        put(name, frechet_from_stats(stats, ref), net.name, frames, net.resolution,
            more={"reference_videos": len(clips), "reference": clips.fingerprint, "generated_frames": t,
                  "generated_resolution": res})
    for name, values in per_video.items():
        if name != "motion":
            net_name = PER_VIDEO_FEATURES.get(name, getattr(suite.clip, "name", "none"))
            put(name, float(np.mean(values)), net_name, t, res, float(np.std(values)))
    if "motion" in per_video:
        proto = suite.motion["protocol"]
        flow = f"flow-{proto.method}-s{proto.short_side}@{suite.motion['sample_fps']:g}fps"
        ref_scores = refs.motion(clips)
        dist = motion_distance(per_video["motion"], ref_scores)
        more = {"reference_motion": float(np.mean(ref_scores)), "reference_videos": len(ref_scores),
                "reference": clips.fingerprint}
        put("motion", float(np.mean(per_video["motion"])), flow, t, res, float(np.std(per_video["motion"])), more)
        put("motion_ratio", dist["ratio"], flow, t, res, more=more)
        put("motion_w1", dist["wasserstein"], flow, t, res, more=more)
    return metrics, {k: v.tolist() for k, v in per_video.items()}


# ------------------------------------------------------------------------------------ the run
def resolve_device(name: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N``; with several ranks, bare ``cuda`` is this rank's GPU."""
    from vldm.evaluation.ranks import local_rank
    from vldm.sampling.run import resolve_device as sampling_device
    from vldm.utils.distributed import process_group_rank_world

    device = sampling_device(str(name))
    if device.type == "cuda" and device.index is None and process_group_rank_world()[1] > 1:
        device = torch.device("cuda", local_rank())
    return device


def _sampler_overrides(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}


def evaluate_checkpoint(ref: Any, cfg: DictConfig, suite: MetricSuite, refs: ReferenceCache, device: torch.device,
                        rank: int, world: int) -> dict[str, Any]:
    """Generate this rank's share of the videos from ``ref`` and score them (all ranks take part)."""
    from vldm.evaluation.checkpoints import load_checkpoint
    from vldm.evaluation.generate import GenerationSettings, generate_videos, sampler_config

    start = time.perf_counter()
    model, train_cfg = load_checkpoint(ref, device)
    num_frames = int(cfg.data.num_frames or train_cfg.data.num_frames)
    size = frame_size(cfg.data.size or train_cfg.data.size)
    check_frames(suite, num_frames)
    clips = refs.clips(num_frames, size)
    suite = suite.for_mode(str(cfg.mode), clips.captions)
    video_dir = Path(cfg.out_dir) / _slug(ref.name) / "videos" if cfg.save_videos else None
    settings = GenerationSettings(num_frames=num_frames, size=size, base_seed=int(cfg.seed), mode=str(cfg.mode),
                                  fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id, cond_aug=float(cfg.cond_aug),
                                  sampler=_sampler_overrides(cfg), video_dir=video_dir, device=str(device),
                                  progress=bool(cfg.progress), batch_size=int(cfg.batch_size))
    indices, videos = generate_videos(model, clips, settings, rank, world, what=ref.name)
    generated = time.perf_counter()
    sampler = asdict(sampler_config(model, settings.sampler))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fps = [float(settings.fps if settings.fps is not None else clips.fps[i]) for i in indices]
    extra = {"checkpoint": ref.name, "weights": str(ref.weights_path), "mode": settings.mode,
             **({"cond_aug": settings.cond_aug} if settings.mode == "i2v" else {}), "fps_setting": _or_clips(settings.fps),
             "motion_bucket_id": _or_clips(settings.motion_bucket_id),
             "sampler": {k: v for k, v in sampler.items() if k != "progress"}}
    metrics, per_video = score(suite, refs, clips, indices, videos, fps, True, settings.seeds_text(len(clips)), extra)
    return {"name": ref.name, "mode": settings.mode, "run": ref.run, "stage": ref.stage, "step": ref.step,
            "cumulative_step": ref.cumulative_step, "offset": ref.offset,
            "init_run_dir": None if ref.init_run is None else str(ref.init_run), "init_step": ref.init_step,
            "kind": ref.kind, "inflated": ref.inflated, "weights": str(ref.weights_path), "run_dir": str(ref.run_dir),
            "num_videos": len(clips), "num_frames": num_frames, "resolution": size_record(size),
            "seeds": settings.seeds_text(len(clips)),
            "metrics": metrics, "per_video": per_video, "skipped": dict(suite.skipped),
            "seconds": {"generate": round(generated - start, 2), "score": round(time.perf_counter() - generated, 2)}}


def _or_clips(value: Any) -> Any:
    return value if value is not None else "reference clip's"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def read_folder(folder: str | Path, num_frames: int | None,
                size: int | Sequence[int] | None) -> tuple[list[Path], np.ndarray, list[float]]:
    """The folder's mp4s (sorted by name) as uint8 ``(n, t, h, w, 3)``, their first ``num_frames``
    frames, and their fps. Mismatched resolution or too few frames: ValueError naming the file."""
    from vldm.io.video_io import read_video

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".mp4", ".webm", ".mov", ".mkv"))
    if not files:
        raise FileNotFoundError(f"videos={folder}: no .mp4/.webm/.mov/.mkv files")
    decoded = [(p, *read_video(p)) for p in files]
    want_t = num_frames or min(len(frames) for _, frames, _ in decoded)
    first = decoded[0][1]
    want = frame_size(size) if size else tuple(first.shape[1:3])
    out, fps = [], []
    for path, frames, rate in decoded:
        h, w = frames.shape[1:3]
        if (h, w) != want:
            shown = f"{want[1]}x{want[0]}"
            raise ValueError(f"resolution mismatch: {path} is {w}x{h} but the protocol resolution is {shown} "
                             f"(data.size{'' if size else ', from the first video'}); generate at {shown} or "
                             f"set data.size to the videos' size (the reference clips are resized to it)")
        if len(frames) < want_t:
            raise ValueError(f"{path} has {len(frames)} frames, the protocol takes {want_t} (data.num_frames)")
        out.append(frames[:want_t])
        fps.append(float(rate))
    return files, np.stack(out), fps


def evaluate_folder(cfg: DictConfig, suite: MetricSuite, refs: ReferenceCache, rank: int, world: int,
                    say: Callable[[str], None]) -> dict[str, Any]:
    """Score the videos of ``cfg.videos`` (one per reference clip by sorted name when the counts
    match: all metrics; otherwise the distribution and per-video ones, no paired metrics)."""
    from vldm.evaluation.ranks import shard_indices

    start = time.perf_counter()
    files, videos, fps = read_folder(cfg.videos, cfg.data.num_frames, cfg.data.size)
    check_frames(suite, videos.shape[1])
    clips = refs.clips(int(videos.shape[1]), (int(videos.shape[2]), int(videos.shape[3])))
    paired = len(files) == len(clips)
    skipped = dict(suite.skipped)
    if not paired:
        reason = (f"{len(files)} videos in {cfg.videos} vs {len(clips)} reference clips: not one per clip, so no "
                  f"paired metric")
        for name in ("psnr", "ssim", "clip_score"):
            skipped.setdefault(name, reason)
        say(f"[vldm] eval: {reason} (psnr, ssim, clip_score skipped)")
    mine = shard_indices(len(files), rank, world)
    metrics, per_video = score(suite, refs, clips, mine, videos[mine], [fps[i] for i in mine], paired,
                               "unknown (folder of videos)", {"videos": str(cfg.videos)})
    return {"name": Path(cfg.videos).name, "run": str(cfg.videos), "stage": "folder", "step": None, "cumulative_step": None, "kind": "folder",
            "inflated": False, "weights": None, "run_dir": str(cfg.videos), "num_videos": len(files),
            "num_frames": int(videos.shape[1]), "resolution": size_record(videos.shape[2:4]),
            "files": [p.name for p in files], "metrics": metrics, "per_video": per_video, "skipped": skipped,
            "seconds": {"score": round(time.perf_counter() - start, 2)}}


def _print_table(results: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    from vldm.evaluation.outputs import metric_names

    names = metric_names(results)
    say("[vldm] eval: " + " | ".join(["checkpoint".ljust(26), "step".rjust(6), *[n.rjust(12) for n in names]]))
    for r in results:
        values = [f"{r['metrics'][n]['value']:.4g}".rjust(12) if n in r["metrics"] else "-".rjust(12) for n in names]
        step = "" if r.get("cumulative_step") is None else str(r["cumulative_step"])
        say("[vldm] eval: " + " | ".join([str(r["name"])[:26].ljust(26), step.rjust(6), *values]))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation described by ``cfg`` (``configs/evaluate.yaml``).

    Returns ``{"results": [one record per checkpoint / folder], "paths": {what: Path}, "warnings": [...]}``
    (paths on rank 0 only).
    """
    from vldm.evaluation.checkpoints import check_mode, resolve_checkpoints
    from vldm.evaluation.outputs import write_outputs
    from vldm.evaluation.ranks import barrier
    from vldm.utils.distributed import process_group_rank_world

    rank, world = process_group_rank_world()

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    if bool(cfg.checkpoints) == bool(cfg.videos):
        raise ValueError("give either checkpoints=RUN (a run root, stage run dir, weights file or a list) or "
                         "videos=DIR (a folder of generated videos), not both / neither")
    check_mode(str(cfg.mode))
    device = resolve_device(cfg.device)
    suite = build_metrics(cfg, str(device), say)
    refs = ReferenceCache(OmegaConf.to_container(cfg.data.shards, resolve=True) if OmegaConf.is_list(cfg.data.shards)
                          else str(cfg.data.shards), int(cfg.data.num_videos), cfg.cache_dir, suite, say, rank, world)
    results = []
    if cfg.videos:
        results.append(evaluate_folder(cfg, suite, refs, rank, world, say))
    else:
        spec = OmegaConf.to_container(cfg.checkpoints, resolve=True) if OmegaConf.is_list(cfg.checkpoints) \
            else str(cfg.checkpoints)
        checkpoints = resolve_checkpoints(spec, str(cfg.every), cfg.video_config, say, mode=str(cfg.mode))
        say(f"[vldm] eval: {len(checkpoints)} checkpoint(s): {', '.join(c.name for c in checkpoints)}")
        for ref in checkpoints:
            results.append(evaluate_checkpoint(ref, cfg, suite, refs, device, rank, world))
            say(f"[vldm] eval: {ref.name} done ({results[-1]['seconds']})")
    warnings = sorted({m["warning"] for r in results for m in r["metrics"].values() if m.get("warning")})
    for line in warnings:
        say(f"[vldm] eval: warning: {line}")
    paths: dict[str, Path] = {}
    if rank == 0:
        config = OmegaConf.to_container(cfg, resolve=True)
        paths = write_outputs(cfg.out_dir, results, {"config": config, "warnings": warnings, "world_size": world,
                                                     "skipped": dict(suite.skipped)},
                              wandb_cfg=OmegaConf.to_container(cfg.logger.wandb, resolve=True), say=say)
        _print_table(results, say)
        say(f"[vldm] eval: wrote {paths['json']}, {paths['csv']} and {Path(cfg.out_dir) / 'plots'}")
    barrier()
    return {"results": results, "paths": paths, "warnings": warnings}
