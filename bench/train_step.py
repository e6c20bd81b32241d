"""Training-step speed and memory: our SVD UNet vs diffusers', and the video stage with vs without latent caching.

(a) ``unet``: one training step — EDM v-prediction preconditioning, forward, weighted loss, backward,
AdamW step — of our video UNet (:class:`vldm.nn.unet.UNet` through :class:`vldm.diffusion.denoiser.Denoiser`,
the code ``DiffusionModule.diffusion_loss`` runs) and of diffusers' ``UNetSpatioTemporalConditionModel``
holding the same weights (the strict maps of :mod:`vldm.testing.diffusers_maps`), on the same batch (latents,
noise, sigmas, CLIP token, concat latent, fps / motion / cond_aug ids), with the same optimizer
(AdamW, same lr) and precision. The first step's losses of the two must agree (same computation).
(b) ``latent``: the toy video stage (``configs/model/toy_video.yaml``, ``configs/data/toy_videos.yaml``:
8 clips x 6 frames at 32 px) — a step being: next batch from the data loader, ``diffusion_loss``,
backward, AdamW, EMA update — reading mp4 shards (decode, CLIP, autoencoder every step) vs reading the
latent cache of the same clips (``configs/data/toy_videos_latent.yaml``) made by
:mod:`vldm.jobs.latent_cache` with the same module. Printed beside it: the FLOP ceiling of that
speed-up (:mod:`bench.step_flops`: caching removes the encoders, never the UNet's work).

Timing: the cases of a part are built in one process and run in turn, ``--rounds`` rounds of
``--steps`` steps (order reversed every other round), after ``--warmup`` steps each; a case's speed is
its fastest round, a ratio the median of the per-round ratios (a shared machine's drifts hit both
alike). On CPU one thread by default (``--threads``): on a busy machine OpenMP threads waiting for a
descheduled sibling slow single rounds many-fold (docs/benchmarks.md), which a per-thread comparison avoids.
Memory (part a): each tool in its own process — CUDA ``max_memory_allocated``; CPU the peak
resident set (``VmHWM``, reset after the warm-up) with allocations >= 64 KiB mmap-ed so that the
resident set follows live tensors. Results: tables and ``bench/results/train_step-<device>.json``.

    python -m bench.train_step                                 # CPU: tiny UNet pair + toy latent caching
    python -m bench.train_step --device cuda --size full       # SVD size (14 x 576x1024, bf16 autocast)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.repo import RESULTS, ROOT, compose
from bench.timing import PeakMemory, environment, write_report
from vldm.testing.diffusers_bridge import SVD_UNET, TINY_SCALAR_DIM, TINY_SVD_UNET

SIZES: dict[str, dict[str, Any]] = {
    # the parity tests' tiny SVD UNet (5.9 M parameters), 2 clips x 4 frames of 16x16 latents
    "tiny": dict(unet=TINY_SVD_UNET, scalar_dim=TINY_SCALAR_DIM, batch=2, frames=4, latent=(16, 16)),
    # bench/sample.py's reduced SVD: every block type at 1/5 width, 8 frames of 128x192 pixels
    "small": dict(unet=dict(SVD_UNET, model_channels=64, num_head_channels=32, context_dim=64, adm_in_channels=96),
                  scalar_dim=32, batch=1, frames=8, latent=(16, 24)),
    # SVD: the released UNet (1.52 B), 14 frames of 576x1024, activation checkpointing in both tools
    "full": dict(unet=dict(SVD_UNET, gradient_checkpointing=True), scalar_dim=256, batch=1, frames=14,
                 latent=(72, 128)),
}
TOOLS = ("vldm", "diffusers")
LR = 1e-4
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}  # see bench/sample.py


def size_spec(args: argparse.Namespace) -> dict:
    """The ``--size`` entry, with activation checkpointing forced on by ``--gradient-checkpointing``."""
    spec = dict(SIZES[args.size])
    if args.gradient_checkpointing:
        spec["unet"] = dict(spec["unet"], gradient_checkpointing=True)
    return spec


def sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


# ------------------------------------------------------------------------------------------- (a) UNet pair

def unet_batch(spec: dict, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Clean latents, noise, per-clip sigmas and the i2v conditioning for one step (fixed seed)."""
    from vldm.diffusion.sigma_sampling import EDMSigmaSampler

    g = torch.Generator().manual_seed(seed)
    b, t, (h, w) = spec["batch"], spec["frames"], spec["latent"]
    c = spec["unet"]["context_dim"]
    batch = dict(x0=torch.randn(b, t, 4, h, w, generator=g), noise=torch.randn(b, t, 4, h, w, generator=g),
                 sigma=EDMSigmaSampler(p_mean=0.7, p_std=1.6)(b, generator=g),
                 concat=torch.randn(b, 4, h, w, generator=g), context=torch.randn(b, 1, c, generator=g),
                 ids=torch.tensor([[6.0, 127.0, 0.02]]).repeat(b, 1))
    return {k: v.to(device) for k, v in batch.items()}


def build_unet_pair(spec: dict, device: torch.device, tools: tuple[str, ...] = TOOLS, seed: int = 0) -> dict:
    """``{tool: network}``: our random UNet and diffusers' holding its weights (strict load, SGM GroupNorm eps)."""
    from vldm.nn.unet import UNet
    from vldm.testing.diffusers_bridge import diffusers_unet_config, load_strict, randomize_, use_sgm_resnet_eps_
    from vldm.testing.diffusers_maps import sgm_unet_to_diffusers

    ours = randomize_(UNet(**spec["unet"]), seed)
    nets = {}
    if "diffusers" in tools:
        from diffusers import UNetSpatioTemporalConditionModel

        ref = UNetSpatioTemporalConditionModel(**diffusers_unet_config(ours.config, spec["scalar_dim"], spec["frames"]))
        load_strict(ref, sgm_unet_to_diffusers(ours.state_dict()))
        use_sgm_resnet_eps_(ref)
        if spec["unet"].get("gradient_checkpointing"):
            ref.enable_gradient_checkpointing()
        nets["diffusers"] = ref.to(device).train()
    if "vldm" in tools:
        nets["vldm"] = ours.to(device).train()
    return nets


def unet_step(tool: str, net: torch.nn.Module, batch: dict, spec: dict, device: torch.device,
              precision: str) -> Callable[[], float]:
    """One training step of ``tool``'s network on ``batch``; returns the loss."""
    from vldm.conditioning.i2v_inputs import expand_to_frames
    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND
    from vldm.diffusion.denoiser import Denoiser, VScalingWithEDMcNoise
    from vldm.diffusion.loss_weighting import EDMWeighting
    from vldm.models.latent_diffusion import DiffusionWrapper

    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    scaling, weighting = VScalingWithEDMcNoise(), EDMWeighting(sigma_data=1.0)
    x0, sigma = batch["x0"], batch["sigma"]
    b, t = x0.shape[:2]
    noised = x0 + batch["noise"] * sigma.reshape(b, 1, 1, 1, 1)

    if tool == "vldm":
        wrapper, denoiser = DiffusionWrapper(net), Denoiser(scaling)
        embed = ConcatTimestepEmbedderND(spec["scalar_dim"])

        def forward() -> torch.Tensor:  # what DiffusionModule.diffusion_loss does after the encoders
            vector = torch.cat([embed(batch["ids"][:, i]) for i in range(3)], dim=1)
            cond = expand_to_frames({"crossattn": batch["context"], "concat": batch["concat"], "vector": vector}, t)
            s = sigma.repeat_interleave(t)
            pred = denoiser(wrapper, noised.flatten(0, 1), s, cond, num_frames=t,
                            image_only_indicator=torch.zeros(b, t, device=device))
            return (weighting(s) * ((pred.float() - x0.flatten(0, 1).float()) ** 2).mean(dim=(1, 2, 3))).mean()
    else:
        def forward() -> torch.Tensor:  # the same preconditioning written for diffusers' (b, t, c, h, w) layout
            c_skip, c_out, c_in, c_noise = (s.reshape(b, 1, 1, 1, 1) for s in scaling(sigma))
            net_in = torch.cat([c_in * noised, batch["concat"][:, None].expand(-1, t, -1, -1, -1)], dim=2)
            out = net(net_in, c_noise.reshape(b), encoder_hidden_states=batch["context"],
                      added_time_ids=batch["ids"]).sample
            pred = c_skip * noised + c_out * out
            per_frame = ((pred.float() - x0.float()) ** 2).mean(dim=(2, 3, 4))
            return (weighting(sigma)[:, None] * per_frame).mean()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = forward()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def unet_memory_worker(args: argparse.Namespace) -> dict:
    """In its own process: build one tool, warm up, then the peak memory of ``--memory-steps`` steps."""
    device, spec = torch.device(args.device), size_spec(args)
    memory = PeakMemory(device)
    nets = build_unet_pair(spec, device, tools=(args.worker,))
    step = unet_step(args.worker, nets[args.worker], unet_batch(spec, device), spec, device, args.precision)
    step()
    baseline = memory.reset()
    for _ in range(args.memory_steps):
        step()
    return {"peak_bytes": memory.peak(), "baseline_bytes": baseline, "note": memory.note}


def run_memory_worker(tool: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        cmd = [sys.executable, "-m", "bench.train_step", "--worker", tool, "--result", str(out), "--device",
               args.device, "--size", args.size, "--precision", args.precision]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        env = {**os.environ, **(CPU_MEMORY_ENV if args.device == "cpu" else {})}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            return {"error": "\n".join((proc.stderr or "").strip().splitlines()[-10:]) or f"exit {proc.returncode}"}
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------- (b) latent caching

def latent_cases(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Callable[[], Any]], dict]:
    """The toy video stage stepping on mp4 shards (``video``) and on their latent cache (``latent``)."""
    from hydra.utils import instantiate

    from vldm.jobs.latent_cache import cache_latents
    from vldm.jobs.toy_data import write_toy_dataset
    from vldm.training.run import stage_module

    device = torch.device(args.device)
    start = time.perf_counter()
    write_toy_dataset(workdir / "toy", num_train=args.clips, num_val=0, samples_per_shard=32)

    def config(*overrides: str):
        return compose("train", ["stage=video", f"paths.data_dir={workdir / 'toy'}", "stage.init_from=null",
                                 *overrides])

    cfg = config()
    torch.manual_seed(0)
    module = stage_module(cfg).to(device)
    info = {"data_s": round(time.perf_counter() - start, 2), "clips": args.clips, "batch": cfg.data.batch_size,
            "frames": cfg.data.num_frames, "size": cfg.data.size}
    start = time.perf_counter()
    report = cache_latents(module, cfg.data.train_shards, workdir / "latents", cfg.data.num_frames, cfg.data.size)
    info.update(cache_s=round(time.perf_counter() - start, 2), cached_clips=report.written)
    video_dm = instantiate(cfg.data, val_shards=None, _convert_="object")
    latent_cfg = config("data=toy_videos_latent", f"data.train_shards={workdir / 'latents'}/train-*.tar",
                        "data.val_shards=null")
    latent_dm = instantiate(latent_cfg.data, _convert_="object")
    assert latent_dm.batch_size == video_dm.batch_size and latent_dm.cache_fingerprint is not None
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=module.lr)
    timers: dict[str, dict[str, float]] = {}

    def case(name: str, dm) -> Callable[[], Any]:
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        timers[name] = {"data_s": 0.0, "steps": 0}

        def step() -> Any:
            t0 = time.perf_counter()
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(loader).items()}
            timers[name]["data_s"] += time.perf_counter() - t0
            timers[name]["steps"] += 1
            opt.zero_grad(set_to_none=True)
            loss = module.diffusion_loss(batch)
            loss.backward()
            opt.step()
            module.model_ema.update(module.network)
            return loss.detach()

        return step

    return {"video": case("video", video_dm), "latent": case("latent", latent_dm)}, {"setup": info, "timers": timers}


# ------------------------------------------------------------------------------------------- timing

def paired_rounds(cases: dict[str, Callable[[], Any]], args: argparse.Namespace,
                  sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per step of each case, per round (cases in turn, order reversed every other round)."""
    for step in cases.values():
        for _ in range(args.warmup):
            step()
    sync()
    order, per_round = list(cases), {name: [] for name in cases}
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            for _ in range(args.steps):
                cases[name]()
            sync()
            per_round[name].append((time.perf_counter() - start) / args.steps)
    return per_round


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def render(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_unet(args: argparse.Namespace) -> dict:
    device, spec = torch.device(args.device), size_spec(args)
    nets = build_unet_pair(spec, device)
    params = sum(p.numel() for p in nets["vldm"].parameters())
    batch = unet_batch(spec, device)
    steps = {tool: unet_step(tool, nets[tool], batch, spec, device, args.precision) for tool in TOOLS}
    first = {tool: float(steps[tool]()) for tool in TOOLS}  # before any update: the same weights and batch
    args_warm = argparse.Namespace(**{**vars(args), "warmup": max(args.warmup - 1, 0)})
    per_round = paired_rounds(steps, args_warm, sync_for(device))
    memory = {tool: run_memory_worker(tool, args) for tool in TOOLS} if not args.no_memory else {}
    b = spec["batch"]
    result: dict[str, Any] = {"size": args.size, "params": params,
                              "gradient_checkpointing": bool(spec["unet"].get("gradient_checkpointing")),
                              "batch": b, "frames": spec["frames"],
                              "latent": list(spec["latent"]), "precision": args.precision, "first_loss": first,
                              "loss_rel_diff": abs(first["vldm"] - first["diffusers"]) / abs(first["diffusers"]),
                              "tools": {}}
    for tool in TOOLS:
        best = min(per_round[tool])
        result["tools"][tool] = {"step_s": best, "samples_per_s": b / best, "rounds_s": per_round[tool],
                                 **memory.get(tool, {})}
    result["speed_ratio"] = median_ratio(per_round["diffusers"], per_round["vldm"])  # ours/diffusers samples/s
    rows = [("tool", "s/step", "clips/s", "frames/s", "peak memory", "peak - start")]
    for tool in TOOLS:
        r = result["tools"][tool]
        work = r["peak_bytes"] - r["baseline_bytes"] if r.get("peak_bytes") and r.get("baseline_bytes") else None
        rows.append((tool, f"{r['step_s']:.4f}", f"{r['samples_per_s']:.2f}",
                     f"{r['samples_per_s'] * spec['frames']:.1f}", fmt_bytes(r.get("peak_bytes")), fmt_bytes(work)))
    rows.append(("vldm/diffusers", "", f"{result['speed_ratio']:.2f}x", "", "", ""))
    result["table"] = render(rows)
    return result


def bench_latent(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cases, info = latent_cases(args, Path(tmp))
        per_round = paired_rounds(cases, args, sync_for(device))
    timers, setup = info["timers"], info["setup"]
    result: dict[str, Any] = {**setup, "cases": {}}
    rows = [("pipeline", "s/step", "steps/s", "clips/s", "of which data s/step")]
    for name in cases:
        best = min(per_round[name])
        data = timers[name]["data_s"] / max(timers[name]["steps"], 1)
        result["cases"][name] = {"step_s": best, "steps_per_s": 1 / best, "rounds_s": per_round[name],
                                 "data_s_per_step_mean": data}
        rows.append((name, f"{best:.4f}", f"{1 / best:.2f}", f"{setup['batch'] / best:.1f}", f"{data:.4f}"))
    result["speedup"] = median_ratio(per_round["video"], per_round["latent"])  # latent steps/s over video's
    rows.append(("latent/video", "", f"{result['speedup']:.2f}x", "", ""))
    # the most caching can give a compute-bound step: FLOPs with / without the encoders (bench/step_flops.py)
    from bench.step_flops import build_on_meta, caching_flops

    flops = caching_flops(build_on_meta("toy_video"), setup["batch"], setup["frames"], (setup["size"],) * 2)
    result["flops"] = flops
    rows.append(("FLOP ceiling", "", f"{flops['ceiling']:.2f}x", "", f"encoders {flops['removed_share']:.0%}"))
    result["table"] = render(rows)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default=None, choices=sorted(SIZES),
                   help="UNet pair size (default: tiny on cpu, full on cuda)")
    p.add_argument("--parts", default="unet,latent", help="unet (vs diffusers) and/or latent (caching)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed"],
                   help="both tools alike (default: fp32 on cpu, bf16-mixed on cuda)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="activation checkpointing in both UNets (always on at --size full)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps per case per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--clips", type=int, default=64, help="toy training clips for the latent part")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on cpu: 1, see the module docstring; on cuda: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-tool memory processes")
    p.add_argument("--memory-steps", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/train_step-<device>.json)")
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or ("full" if args.device == "cuda" else "tiny")
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "fp32")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = unet_memory_worker(args)
        Path(args.result).write_text(json.dumps(result))
        return result
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    parts = args.parts.split(",")
    report: dict[str, Any] = {"device": args.device, "environment": environment(device),
                              "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "out")}}
    if "unet" in parts:
        spec = size_spec(args)
        print(f"(a) UNet training step, {args.size}: {spec['batch']} clips x {spec['frames']} frames of "
              f"{spec['latent'][0]}x{spec['latent'][1]} latents, AdamW, {args.precision} on {args.device}", flush=True)
        report["unet"] = bench_unet(args)
        print(report["unet"]["table"])
        print(f"first-step loss: vldm {report['unet']['first_loss']['vldm']:.6f}, diffusers "
              f"{report['unet']['first_loss']['diffusers']:.6f} (rel. diff {report['unet']['loss_rel_diff']:.1e})")
    if "latent" in parts:
        print(f"(b) toy video stage: mp4 shards vs latent cache, {args.clips} clips, on {args.device}", flush=True)
        report["latent"] = bench_latent(args)
        print(report["latent"]["table"])
        print(f"caching {report['latent']['cached_clips']} clips took {report['latent']['cache_s']} s")
    write_report(report, args.out, RESULTS / f"train_step-{args.device}.json")
    return report


if __name__ == "__main__":
    main()
