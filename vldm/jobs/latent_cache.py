"""Latent caching: encode video shards once into autoencoder latents + conditioning, as shards.

Stages 2 and 3 (image-to-video) then read :mod:`vldm.data.latent_dataset` shards instead of
decoding mp4s and running the first-stage encoder and the CLIP image tower every step.

What is stored per clip, and why (see :meth:`~vldm.training.module.DiffusionModule.diffusion_loss`):

* ``latents`` + ``latents_logvar``: the posterior ``N(mean, exp(logvar))`` of every frame. Training
  samples ``z = mean + std * n`` each step, so caching the mean alone (``store="mode"``) would change
  training (no posterior noise); with both, a cached batch gives the same loss as the video batch
  for the same generator (up to float rounding of the encoder run at another batch size).
* ``cond_frame``: the first frame as uint8. The concat conditioning is
  ``encode(first_frame + cond_aug * noise).mode()`` with fresh ``cond_aug`` and ``noise`` every
  step, so it cannot be cached exactly; the module encodes this one frame per clip on the fly.
* ``cached.<i>``: the output of every embedder ``i`` whose input does not depend on per-step
  randomness — the CLIP embedding of the clean first frame (``cond_frames_without_noise``) and a
  text embedding of the caption (``txt``). Classifier-free-guidance dropout still happens per step.
* the json: the source metadata plus ``fps_id``, ``motion_bucket_id`` and ``caption``.

One output shard per input shard, same name, written to ``<name>.tmp`` and renamed when complete:
rerunning resumes at the first shard not yet written and never duplicates a clip. Clips the video
reader skips (undecodable, too short) are counted. ``latent_cache.json`` records the settings and
a fingerprint of the weights used; training refuses latents of other weights.

    python -m vldm.jobs.latent_cache stage=video experiment=toy paths.data_dir=data/toy
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vldm.data.frames import size_record
from vldm.data.latent_dataset import CACHED_PREFIX, LATENT_MEMBER, MANIFEST, cached_embedders, fingerprint
from vldm.data.shards import VideoClipDataset
from vldm.io.tar_shards import add_tar_member, resolve_shards
from vldm.utils.distributed import global_rank, task_device, world_size
from vldm.video.pixels import to_uint8

log = logging.getLogger(__name__)

STORES = ("posterior", "mode")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _ClipsWithMeta(VideoClipDataset):
    """The video reader of training, keeping each clip's json for the latent shard."""

    def decode(self, sample: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        out = super().decode(sample, meta)
        out["meta"] = meta
        return out


@dataclass
class ShardReport:
    name: str
    written: int = 0
    skipped: int = 0
    done_before: bool = False
    seconds: float = 0.0


@dataclass
class CacheReport:
    out_dir: str
    shards: list[ShardReport] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(s.written for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.shards)


def _batches(clips: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def encode_batch(module: nn.Module, video: torch.Tensor, txt: Sequence[str],
                 chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """What the cache holds for a batch of clips, batched, on the module's device (see the module
    docstring): ``latents`` / ``latents_logvar`` ``(b, t, c, h, w)``, ``cond_frame`` ``(b, 3, H, W)``
    in [-1, 1] and ``cached.<i>`` for every cacheable embedder. ``video``: ``(b, t, 3, H, W)`` in [-1, 1]."""
    b, t = video.shape[:2]
    posterior = module.first_stage_model.encode_frames(video.flatten(0, 1), chunk_size)
    out = {"latents": posterior.mean.reshape(b, t, *posterior.mean.shape[1:]),
           "latents_logvar": posterior.logvar.reshape(b, t, *posterior.logvar.shape[1:]),
           "cond_frame": video[:, 0]}
    inputs = {"cond_frames_without_noise": video[:, 0], "txt": list(txt)}
    for i in cached_embedders(module.conditioner):
        out[f"{CACHED_PREFIX}{i}"] = module.conditioner.embedders[i](inputs[module.conditioner.input_keys[i]])
    return out


def encode_clips(module: nn.Module, clips: list[dict[str, Any]], store: str = "posterior",
                 dtype: torch.dtype = torch.float32, chunk_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The tensors stored for each clip, on the CPU: :func:`encode_batch` split per clip, latents in
    ``dtype``, the conditioning frame as uint8, cached embeddings in float32."""
    device = next(module.first_stage_model.parameters()).device
    video = torch.stack([c["video"] for c in clips]).to(device)
    batch = encode_batch(module, video, [c["txt"] for c in clips], chunk_size)
    out = []
    for j in range(video.shape[0]):
        tensors = {"latents": batch["latents"][j].to(dtype), "cond_frame": to_uint8(batch["cond_frame"][j])}
        if store == "posterior":
            tensors["latents_logvar"] = batch["latents_logvar"][j].to(dtype)
        tensors.update({k: v[j].float() for k, v in batch.items() if k.startswith(CACHED_PREFIX)})
        out.append({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    return out


def cache_shard(module: nn.Module, shard: str, out_path: Path, num_frames: int, size: int | Sequence[int],
                batch_size: int = 8, store: str = "posterior", dtype: torch.dtype = torch.float32,
                chunk_size: int | None = None, frame_stride: int = 1) -> ShardReport:
    """Encode one video shard into ``out_path`` (``<out_path>.tmp``, fsync, rename); skip it if done."""
    from safetensors.torch import save

    report = ShardReport(out_path.name)
    if out_path.exists():
        report.done_before = True
        return report
    start = time.perf_counter()
    clips = _ClipsWithMeta([shard], num_frames=num_frames, size=size, repeat=False, shuffle_shards=False,
                           frame_stride=frame_stride)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for batch in _batches(clips, batch_size):
                    for clip, tensors in zip(batch, encode_clips(module, batch, store, dtype, chunk_size)):
                        meta = dict(clip["meta"], caption=clip["txt"], fps_id=clip["fps_id"],
                                    motion_bucket_id=clip["motion_bucket_id"])
                        add_tar_member(tar, f"{clip['__key__']}.{LATENT_MEMBER}", save(tensors))
                        add_tar_member(tar, f"{clip['__key__']}.json", json.dumps(meta, sort_keys=True).encode())
                        report.written += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.skipped = clips.num_skipped
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def check_or_write_manifest(out_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``latent_cache.json``; if one exists, it must name the same settings and weights
    (a cache never mixes latents of two autoencoders, frame counts or sizes)."""
    path = out_dir / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out_dir} holds a latent cache made with other settings {diff} (old, new); "
                             "use another --out or delete it")
        return
    _atomic_write_json(path, settings)


def cache_latents(module: nn.Module, shards: Sequence[str] | str, out_dir: str | Path, num_frames: int,
                  size: int | Sequence[int], batch_size: int = 8, store: str = "posterior", dtype: str = "float32",
                  rank: int = 0, world: int = 1, chunk_size: int | None = None, frame_stride: int = 1) -> CacheReport:
    """Encode every video shard (this process: every ``world``-th from ``rank``) into ``out_dir``.

    ``module``: a :class:`~vldm.training.module.DiffusionModule` with the stage's first stage and
    conditioner (their weights define the cache). Output shards keep the input shards' names. Each
    clip's first window of ``num_frames`` frames every ``frame_stride`` is cached: one window per
    clip (random windows and strides drawn per step are what caching gives up).
    """
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}")
    shards = resolve_shards(list(shards) if not isinstance(shards, str) else shards)
    names = [Path(s).name for s in shards]
    if len(set(names)) != len(names):
        raise ValueError("input shards must have distinct file names (output shards keep them)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = {str(i): module.conditioner.input_keys[i] for i in cached_embedders(module.conditioner)}
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"a latent cache holds one window per clip: frame_stride must be one int >= 1, "
                         f"got {frame_stride!r}")
    settings = {"format": 1, "fingerprint": fingerprint(module), "num_frames": int(num_frames),
                "size": size_record(size), "store": store, "dtype": dtype, "cached_embedders": keys}
    if frame_stride != 1:  # recorded only when set, so caches written before strides existed still match
        settings["frame_stride"] = frame_stride
    check_or_write_manifest(out_dir, settings)
    report = CacheReport(str(out_dir))
    module.eval()
    for shard in shards[rank::world]:
        result = cache_shard(module, shard, out_dir / Path(shard).name, num_frames, size, batch_size, store,
                             DTYPES[dtype], chunk_size, frame_stride)
        report.shards.append(result)
        state = "already done" if result.done_before else f"{result.written} clips, {result.skipped} skipped"
        log.info("%s: %s", result.name, state)
    return report


# ------------------------------------------------------------------------------------------------ CLI

def _config_dir() -> str:
    return str(Path(__file__).resolve().parents[2] / "configs")


def build_stage_module(overrides: list[str], config_dir: str | None = None):
    """Compose ``train.yaml`` with ``overrides`` and build the stage's module as training does
    (seeded with ``cfg.seed``, ``init_from`` loaded: the first stage is the one the stage trains with)."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    from vldm.training.run import build_module

    with initialize_config_dir(config_dir=config_dir or _config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    pl.seed_everything(cfg.seed, workers=True)
    return cfg, build_module(cfg, Path(cfg.paths.output_dir))


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other arguments are train.yaml overrides, e.g. stage=video paths.data_dir=...")
    p.add_argument("--out", default=None, help="output directory (default: <paths.data_dir>/latents/videos)")
    p.add_argument("--splits", default="train,val", help="which of data.{train,val}_shards to cache")
    p.add_argument("--batch-size", type=int, default=8, help="clips encoded together")
    p.add_argument("--chunk-size", type=int, default=None, help="frames per encoder call (default: all)")
    p.add_argument("--store", default="posterior", choices=STORES)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage dtype of the latents")
    p.add_argument("--device", default="cpu", help="cpu, cuda (this task's local GPU under srun/torchrun) or cuda:N")
    p.add_argument("--rank", type=int, default=global_rank() or 0, help="this task's share (RANK / SLURM_PROCID)")
    p.add_argument("--world", type=int, default=world_size(), help="tasks sharing the work (WORLD_SIZE / SLURM_NTASKS)")
    p.add_argument("--config-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> CacheReport:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, overrides = parse_args(argv)
    cfg, module = build_stage_module(overrides, args.config_dir)
    module.to(task_device(args.device))
    out = Path(args.out or Path(cfg.paths.data_dir) / "latents" / "videos")
    shards = [s for split in args.splits.split(",") if cfg.data.get(f"{split}_shards")
              for s in resolve_shards(cfg.data[f"{split}_shards"])]
    stride = cfg.data.get("frame_stride", 1)
    if not isinstance(stride, int):
        raise SystemExit(f"data.frame_stride={stride}: a latent cache holds one window per clip; give one int")
    if cfg.data.get("clip_start", "first") != "first":
        log.warning("data.clip_start=%s: the cache holds each clip's first window (random windows are not cached)",
                    cfg.data.clip_start)
    report = cache_latents(module, shards, out, cfg.data.num_frames, cfg.data.size, args.batch_size, args.store,
                           args.dtype, args.rank, args.world, args.chunk_size, stride)
    print(json.dumps({"out_dir": report.out_dir, "written": report.written, "skipped": report.skipped,
                      "shards": [asdict(s) for s in report.shards]}, indent=1))
    return report


if __name__ == "__main__":
    main()
