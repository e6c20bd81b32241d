"""What latent caching can save: FLOPs of one video-stage training step on mp4 frames vs on cached latents.

Caching (:mod:`vldm.jobs.latent_cache`) removes two things from a step: the data loader's video
decoding (CPU, in the loader) and the model's frozen encoders — the first-stage encoder on every
frame and the embedders of fixed inputs (the CLIP image tower on the clean first frame). The UNet's
forward and backward, the optimizer and the EMA stay. So the most caching can speed up a
compute-bound step is ``FLOPs(video step) / FLOPs(latent step)``; this script counts both with
``torch.utils.flop_counter`` on the ``meta`` device (shapes only: no memory, no time, any size), for
the toy video stage and for SVD at its training size, next to what each removed part costs.

The step counted is ``DiffusionModule.diffusion_loss`` + backward — the code training runs — on a video
batch and on the batch the cache gives for the same clips (:func:`vldm.jobs.latent_cache.encode_batch`).
Only matrix products, convolutions and attention are counted (elementwise work is not), as
``FlopCounterMode`` does; activation checkpointing recomputes forwards, and those count too.

    python -m bench.step_flops                                 # toy video stage and SVD, 14 x 576x1024
    python -m bench.step_flops --model svd_xt --frames 25 --size 576 1024 --batch 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.repo import RESULTS, compose

#: (model config, batch, frames, (height, width), config overrides): the toy stage of ``make demo``;
#: SVD at its image-to-video shape (Blattmann et al., 2023: 14 frames at 576x1024), with activation
#: checkpointing (configs/model/svd.yaml) and without; and at the paper's video-pretraining 256x384.
CASES: dict[str, tuple[str, int, int, tuple[int, int], tuple[str, ...]]] = {
    "toy": ("toy_video", 8, 6, (32, 32), ()),
    "svd": ("svd", 1, 14, (576, 1024), ()),
    "svd_no_ckpt": ("svd", 1, 14, (576, 1024), ("model.diffusion.network.gradient_checkpointing=false",)),
    "svd_256x384": ("svd", 1, 14, (256, 384), ()),
}


def build_on_meta(model: str, overrides: tuple[str, ...] = ()) -> nn.Module:
    """The stage's ``DiffusionModule`` on ``meta``, in training mode; scalar buffers (the latent scale)
    are real ones, since the step reads their values."""
    from hydra.utils import instantiate

    from vldm.checkpoints.load import build_model

    cfg = compose("train", [f"model={model}", "stage=video", "stage.init_from=null", *overrides])
    with torch.device("meta"):
        module = instantiate(cfg.model.module, model=build_model(cfg.model), _convert_="object")
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None and buf.dim() == 0:
                sub._buffers[name] = torch.ones((), dtype=buf.dtype)
    return module.train()


def step_batches(module: nn.Module, batch: int, frames: int, size: tuple[int, int]) -> tuple[dict, dict]:
    """A video batch and the cached-latent batch the cache holds for it, on ``meta``."""
    from vldm.jobs.latent_cache import encode_batch

    ids = {"fps_id": torch.full((batch,), 6.0, device="meta"),
           "motion_bucket_id": torch.full((batch,), 127.0, device="meta"), "txt": ["a clip"] * batch}
    video = {"video": torch.empty(batch, frames, 3, *size, device="meta"), **ids}
    cached = encode_batch(module, video["video"], ids["txt"])
    return video, {**cached, **ids}


def count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def caching_flops(module: nn.Module, batch: int, frames: int, size: tuple[int, int]) -> dict[str, Any]:
    """FLOPs of the step on video and on cached latents, of the parts caching removes, and the
    ceiling ``video / latent`` on the speed-up of a compute-bound step."""
    from vldm.data.latent_dataset import cached_embedders

    video, latent = step_batches(module, batch, frames, size)

    def step(b: dict) -> None:
        module.diffusion_loss(b).backward()

    def encoders() -> None:
        with torch.no_grad():
            module.first_stage_model.encode_frames(video["video"].flatten(0, 1))

    def embedders() -> None:
        with torch.no_grad():
            for i in cached_embedders(module.conditioner):
                key = module.conditioner.input_keys[i]
                module.conditioner.embedders[i](video["txt"] if key == "txt" else video["video"][:, 0])

    out = {"video_step": count(lambda: step(video)), "latent_step": count(lambda: step(latent)),
           "first_stage_encoder": count(encoders), "cached_embedders": count(embedders)}
    out["removed_share"] = 1.0 - out["latent_step"] / out["video_step"]
    out["ceiling"] = out["video_step"] / out["latent_step"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"named cases, of {sorted(CASES)}")
    p.add_argument("--model", default=None, help="instead of --cases: a model config (configs/model)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--size", type=int, nargs=2, default=(576, 1024), metavar=("H", "W"))
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/step_flops.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cases = ({args.model: (args.model, args.batch, args.frames, tuple(args.size), ())} if args.model
             else {name: CASES[name] for name in args.cases.split(",")})
    report: dict[str, Any] = {}
    print("| case | model | batch x frames x size | step on video | step on latents | encoder | cached embedders "
          "| removed | ceiling |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (model, batch, frames, size, overrides) in cases.items():
        result = caching_flops(build_on_meta(model, overrides), batch, frames, size)
        report[name] = {"model": model, "batch": batch, "frames": frames, "size": list(size),
                        "overrides": list(overrides), **result}
        tf = {k: f"{v / 1e12:.4g} TF" for k, v in result.items() if isinstance(v, int)}
        print(f"| {name} | {model} | {batch} x {frames} x {size[0]}x{size[1]} | {tf['video_step']} | "
              f"{tf['latent_step']} | {tf['first_stage_encoder']} | {tf['cached_embedders']} | "
              f"{result['removed_share']:.1%} | {result['ceiling']:.3f}x |", flush=True)
    out = Path(args.out or RESULTS / "step_flops.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
