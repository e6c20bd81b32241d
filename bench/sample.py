"""Image-to-video sampling speed and memory: vldm's sampler vs diffusers' ``StableVideoDiffusionPipeline``.

Both tools get the same random weights: our SVD-architecture ``DiffusionModule`` is built with a
fixed seed and diffusers receives it through the strict name maps of :mod:`vldm.testing.diffusers_maps`
(which the parity tests prove compute the same video). Nothing is downloaded.

    python -m bench.sample --device cpu --size small   # reduced SVD, fp32: a few minutes on 2 cores
    python -m bench.sample --device cuda --size full   # SVD-XT size: 576x1024, 25 frames, fp16

Per tool, two settings: ``fast``, the tool's fastest setting without offloading (everything on the
device, cond/uncond batched, the clip decoded at once) and ``lean``, its lowest-memory setting
(diffusers: ``enable_model_cpu_offload()`` — or ``--diffusers-lean sequential`` for
``enable_sequential_cpu_offload()`` — plus ``unet.enable_forward_chunking()`` and
``decode_chunk_size=1``; offloading needs an accelerator, so on CPU only the last two; vldm: the
memory planner at ``--lean-budget``, or with ``--no-plan`` just ``decode_chunk_size=1``).

Every case is built, warmed up with a 1-step run, then run ``--repeats`` times with every UNet
forward and every VAE ``decode`` call timed (device synchronised). Reported: seconds per denoising
step (first UNet call start to last UNet call end, over the steps), VAE decode seconds (first to last
``decode`` call), total seconds (the fastest repeat of each), and peak memory. Timing on CUDA: each
(tool, setting) in its own process (``--timing isolated``). Timing on CPU (``--timing paired``): all
cases in one process, run in turn round after round, the ratios being medians of per-round ratios,
so that a shared machine's drifts hit both tools alike. Memory always comes from a process of its
own: CUDA ``max_memory_allocated`` during the run; CPU the peak resident set (``VmHWM``, reset
before the run) with large allocations mmap-ed so that freed memory leaves the resident set;
"peak - start" is what the run added to the weights and runtime already resident. Results: a table
with ours/diffusers ratios, and ``bench/results/sample-<device>.json``. On a busy 2-core machine
``--threads 1`` avoids OpenMP threads waiting on a descheduled sibling (many-fold slowdowns on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.repo import RESULTS, ROOT
from bench.timing import PeakMemory, Spans, environment, write_report
from vldm.testing.diffusers_bridge import SD_VAE, SVD_UNET, TINY_CLIP, TINY_SCALAR_DIM, TINY_SVD_UNET, TINY_SVD_VAE

SIZES: dict[str, dict[str, Any]] = {
    # a reduced SVD: every block type of the real one, 1/5 of its width, a small CLIP at 224 px
    "small": dict(unet=dict(SVD_UNET, model_channels=64, num_head_channels=32, context_dim=64, adm_in_channels=96),
                  scalar_dim=32, vae=dict(SD_VAE, ch=32),
                  clip=dict(clip_cfg=dict(embed_dim=64, vision_cfg=dict(image_size=224, patch_size=32, width=128,
                                                                        layers=2, head_width=64),
                                          text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2,
                                                        layers=1))),
                  height=128, width=192, num_frames=8, steps=4, lean_budget="128MB"),  # fp32: less makes the plan fp16
    # the parity tests' toy model: a smoke test of this script, not a benchmark
    "tiny": dict(unet=TINY_SVD_UNET, scalar_dim=TINY_SCALAR_DIM, vae=TINY_SVD_VAE,
                 clip=dict(clip_cfg=dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], image_size=224,
                                                                     patch_size=32))),
                 height=64, width=64, num_frames=3, steps=2, lean_budget="64MB"),
    # SVD-XT: UNet 1.52 B, SD VAE with the temporal decoder, OpenCLIP ViT-H-14 image tower
    "full": dict(unet=SVD_UNET, scalar_dim=256, vae=SD_VAE, clip=dict(clip_arch="ViT-H-14"),
                 height=576, width=1024, num_frames=25, steps=5, lean_budget="8GB"),
}
GUIDANCE = (1.5, 3.0)  # SVD-XT's per-frame guidance ramp; both tools run cond + uncond
TOOLS = ("vldm", "diffusers")
SETTINGS = ("fast", "lean")


@dataclass
class RunResult:
    tool: str
    setting: str
    step_s: float | None = None
    decode_s: float | None = None
    total_s: float | None = None
    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    unet_calls: int = 0
    decode_calls: int = 0
    detail: dict = field(default_factory=dict)
    error: str | None = None


# ------------------------------------------------------------------------------------------- building

def build_models(size: str, device: torch.device, tool: str):
    """Our module (always: it defines the weights) and, for diffusers, the pipeline holding them."""
    from vldm.testing.diffusers_bridge import build_reference_pipeline, build_svd_module

    spec = SIZES[size]
    with torch.device(device):
        module = build_svd_module(spec["unet"], spec["vae"], spec["scalar_dim"], seed=0, **spec["clip"])
    if tool == "vldm":
        return module, None
    pipe = build_reference_pipeline(module)
    del module
    return None, pipe


def conditioning_image(height: int, width: int, seed: int = 0):
    """A smooth random RGB image (PIL) of the clip's size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.standard_normal((1, 3, 6, 8)).astype(np.float32))
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    img = ((torch.tanh(img[0]) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(img)


def pil_to_tensor(pil) -> torch.Tensor:
    """PIL -> ``(1, 3, h, w)`` in [-1, 1], the conversion diffusers' video processor makes."""
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1


# ------------------------------------------------------------------------------------------- the two tools

def prepare_vldm(module, setting: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
                 spec: dict) -> tuple[Callable[[int], Any], dict]:
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.sampling.pipeline import LatentDiffusionSampler

    module = module.to(dtype=dtype)
    cfg = SamplerConfig(num_steps=spec["steps"], sigma_max=700.0, min_guidance=GUIDANCE[0], max_guidance=GUIDANCE[1],
                        decode_chunk_size=1 if (setting == "lean" and args.no_plan) else None)
    detail: dict = {"planner": not args.no_plan}
    if args.no_plan:
        sampler = LatentDiffusionSampler.from_model(module.to(device))
    else:
        from vldm.sampling.lean import lean_sampler

        budget = (args.lean_budget or spec["lean_budget"]) if setting == "lean" else None
        detail["budget"] = budget
        sampler, plan = lean_sampler(module, device, dtype, budget, spec["num_frames"], spec["height"],
                                     spec["width"], cfg)
        if plan is None:
            detail["plan"] = "none (vldm.sampling.lean returned no plan: planner not wired in)"
        else:
            detail["plan"] = plan.as_dict() if hasattr(plan, "as_dict") else str(plan)
            if hasattr(plan, "describe"):
                print(plan.describe(), flush=True)
    image = pil_to_tensor(conditioning_image(spec["height"], spec["width"])).to(device, dtype)

    def run(steps: int) -> Any:
        from dataclasses import replace

        return sampler.image_to_video(image, spec["num_frames"], fps_id=6, motion_bucket_id=127, cond_aug=0.02,
                                      cfg=replace(cfg, num_steps=steps), seed=0)

    first_stage = getattr(sampler, "first_stage", module.first_stage_model)
    network = getattr(sampler, "network", module.network)
    return run, {"unet": network, "decode_owner": first_stage, "detail": detail}


def prepare_diffusers(pipe, setting: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
                      spec: dict) -> tuple[Callable[[int], Any], dict]:
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    detail: dict = {}
    decode_chunk = spec["num_frames"]
    if setting == "lean":
        if device.type == "cuda":
            pipe = pipe.to("cpu")
            if args.diffusers_lean == "sequential":
                pipe.enable_sequential_cpu_offload(device=device)
            else:
                pipe.enable_model_cpu_offload(device=device)
            detail["offload"] = args.diffusers_lean
        else:
            detail["offload"] = "none (CPU: offloading needs an accelerator)"
        pipe.unet.enable_forward_chunking()
        decode_chunk = 1
        detail["forward_chunking"] = True
    else:
        pipe = pipe.to(device)
    detail["decode_chunk_size"] = decode_chunk
    image = conditioning_image(spec["height"], spec["width"])

    def run(steps: int) -> Any:
        return pipe(image, height=spec["height"], width=spec["width"], num_frames=spec["num_frames"],
                    num_inference_steps=steps, min_guidance_scale=GUIDANCE[0], max_guidance_scale=GUIDANCE[1], fps=7,
                    motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=decode_chunk,
                    generator=torch.Generator().manual_seed(0), output_type="pt").frames

    return run, {"unet": pipe.unet, "decode_owner": pipe.vae, "detail": detail}


@dataclass
class Case:
    """One (tool, setting), built and hooked, ready to run."""

    result: RunResult
    run: Callable[[int], Any]
    unet: Spans
    decode: Spans
    sync: Callable[[], None]
    steps: int
    measured: list[tuple[float | None, float | None, float]] = field(default_factory=list)

    def measure(self) -> torch.Tensor:
        """One timed run; appends (seconds per step, decode seconds, total seconds)."""
        self.unet.reset()
        self.decode.reset()
        self.sync()
        start = time.perf_counter()
        frames = self.run(self.steps)
        self.sync()
        total = time.perf_counter() - start
        step = self.unet.seconds / self.steps if self.unet.seconds is not None else None
        self.measured.append((step, self.decode.seconds, total))
        self.result.unet_calls, self.result.decode_calls = len(self.unet.starts), len(self.decode.starts)
        return frames

    def summarise(self) -> RunResult:
        """The fastest run of each quantity stands for the speed (the others lost time to whatever else ran)."""
        r = self.result
        r.step_s, r.decode_s = (min((m[i] for m in self.measured if m[i] is not None), default=None) for i in (0, 1))
        r.total_s = min((m[2] for m in self.measured), default=None)
        r.detail["runs"] = [dict(step_s=m[0], decode_s=m[1], total_s=m[2]) for m in self.measured]
        return r


def prepare_case(tool: str, setting: str, args: argparse.Namespace) -> Case:
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    spec = SIZES[args.size]
    torch.manual_seed(0)
    start = time.perf_counter()
    module, pipe = build_models(args.size, device, tool)
    prepare = prepare_vldm if tool == "vldm" else prepare_diffusers
    run, parts = prepare(module if tool == "vldm" else pipe, setting, device, dtype, args, spec)
    result = RunResult(tool, setting, detail={**parts["detail"], "build_s": round(time.perf_counter() - start, 2)})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    unet, decode = Spans(sync), Spans(sync)
    unet.hook_module(parts["unet"])
    decode.wrap_method(parts["decode_owner"], "decode")
    return Case(result, run, unet, decode, sync, spec["steps"])


def worker(tool: str, setting: str, args: argparse.Namespace) -> RunResult:
    """Build, warm up and measure one (tool, setting) in this process: time and/or peak memory."""
    case = prepare_case(tool, setting, args)
    memory = PeakMemory(torch.device(args.device))
    with torch.inference_mode():
        case.run(1)  # warm-up: lazy initialisation, kernel selection, first offload moves
        for _ in range(1 if args.measure == "memory" else args.repeats):
            baseline = memory.reset()
            frames = case.measure()
            peak = memory.peak()
            if peak is not None and (case.result.peak_bytes is None or peak > case.result.peak_bytes):
                case.result.peak_bytes, case.result.baseline_bytes = peak, baseline
    case.result.detail["output_shape"] = list(frames.shape)
    case.result.detail["output_finite"] = bool(torch.isfinite(frames.float()).all())
    if memory.note:
        case.result.detail["memory_note"] = memory.note
    return case.summarise()


def paired_timing(pairs: list[tuple[str, str]], args: argparse.Namespace) -> dict[tuple[str, str], RunResult]:
    """Every case in this one process, run in turn, ``--repeats`` rounds (order reversed every other
    round): slow drifts of a shared machine hit every case alike, and ratios are taken per round."""
    cases = {}
    for tool, setting in pairs:
        print(f"-- building {tool} / {setting}", flush=True)
        cases[(tool, setting)] = prepare_case(tool, setting, args)
    order = list(cases)
    with torch.inference_mode():
        for case in cases.values():
            case.run(1)
        for round_ in range(args.repeats):
            for key in (order if round_ % 2 == 0 else order[::-1]):
                cases[key].measure()
    return {key: case.summarise() for key, case in cases.items()}


def paired_ratios(results: list[RunResult]) -> dict[str, dict[str, float | None]]:
    """Median over rounds of ours/diffusers, per setting and quantity (paired timing only)."""
    import statistics

    out = {}
    for setting in SETTINGS:
        by_tool = {r.tool: r for r in results if r.setting == setting and r.error is None}
        if len(by_tool) < 2 or "runs" not in by_tool["vldm"].detail:
            continue
        ours, theirs = by_tool["vldm"].detail["runs"], by_tool["diffusers"].detail["runs"]
        out[setting] = {}
        for key in ("step_s", "decode_s", "total_s"):
            pairs = [(a[key], b[key]) for a, b in zip(ours, theirs) if a[key] and b[key]]
            out[setting][key] = statistics.median(a / b for a, b in pairs) if pairs else None
    return out


# ------------------------------------------------------------------------------------------- driver

# glibc keeps freed heap memory, so a process's resident set stays at its highest level and a later
# run reuses what an earlier phase freed (the build, the warm-up, the other tool's copy of the
# weights). For the CPU memory run, blocks of 64 KiB and more are mmap-ed and unmapped on free, so
# the resident set follows the live tensors. It slows allocation, hence a separate run from timing.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_case(tool: str, setting: str, args: argparse.Namespace) -> RunResult:
    """One (tool, setting): on CUDA one process measures both; on CPU timing and memory run apart."""
    if args.device == "cuda":
        return run_isolated(tool, setting, args, "both")
    timed = run_isolated(tool, setting, args, "time")
    if timed.error is None:
        mem = run_isolated(tool, setting, args, "memory", CPU_MEMORY_ENV)
        timed.peak_bytes, timed.baseline_bytes = mem.peak_bytes, mem.baseline_bytes
        timed.detail["memory_run"] = "separate process, allocations >= 64 KiB mmap-ed" if mem.error is None else (
            f"failed: {mem.error}")
    return timed


def run_isolated(tool: str, setting: str, args: argparse.Namespace, measure: str,
                 env: dict[str, str] | None = None) -> RunResult:
    import os

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.sample", "--worker", tool, setting, "--result", str(out),
               "--device", args.device, "--size", args.size, "--diffusers-lean", args.diffusers_lean,
               "--repeats", str(args.repeats), "--measure", measure]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.lean_budget:
            cmd += ["--lean-budget", args.lean_budget]
        for flag in ("no_plan",):
            if getattr(args, flag):
                cmd.append("--" + flag.replace("_", "-"))
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if proc.stdout.strip() and measure != "memory":
            print(proc.stdout.rstrip(), flush=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or "").strip().splitlines()[-15:]
            return RunResult(tool, setting, error="\n".join(tail) or f"exit code {proc.returncode}")
        return RunResult(**json.loads(out.read_text()))


def working_bytes(r: RunResult) -> int | None:
    """Peak above what the process held when the run started (weights placed, runtime loaded)."""
    return None if r.peak_bytes is None or r.baseline_bytes is None else r.peak_bytes - r.baseline_bytes


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"
    if kind == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3f}"


def table(results: list[RunResult], paired: dict | None = None) -> tuple[str, dict]:
    """The printed table; ratios of the times are the per-round medians when ``paired`` is given."""
    rows = [("setting", "tool", "s/step", "decode s", "total s", "peak memory", "peak - start")]
    ratios: dict[str, dict[str, float | None]] = {}
    for setting in SETTINGS:
        by_tool = {r.tool: r for r in results if r.setting == setting}
        for r in by_tool.values():
            rows.append((setting, r.tool if r.error is None else f"{r.tool} (failed)", fmt(r.step_s, "s"),
                         fmt(r.decode_s, "s"), fmt(r.total_s, "s"), fmt(r.peak_bytes, "bytes"),
                         fmt(working_bytes(r), "bytes")))
        if len(by_tool) == 2:
            ours, theirs = by_tool["vldm"], by_tool["diffusers"]
            ratios[setting] = {k: ratio(getattr(ours, k), getattr(theirs, k))
                               for k in ("step_s", "decode_s", "total_s", "peak_bytes")}
            ratios[setting]["working_bytes"] = ratio(working_bytes(ours), working_bytes(theirs))
            if paired and setting in paired:
                ratios[setting].update({k: v for k, v in paired[setting].items() if v is not None})
            q = ratios[setting]
            rows.append((setting, "vldm/diffusers", fmt(q["step_s"], "ratio"), fmt(q["decode_s"], "ratio"),
                         fmt(q["total_s"], "ratio"), fmt(q["peak_bytes"], "ratio"), fmt(q["working_bytes"], "ratio")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default=None, choices=sorted(SIZES), help="default: small on cpu, full on cuda")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--lean-budget", default=None, help="vldm's memory budget in the lean setting (e.g. 8GB)")
    p.add_argument("--no-plan", action="store_true", help="vldm without the memory planner")
    p.add_argument("--diffusers-lean", default="model", choices=["model", "sequential"],
                   help="diffusers' offload in the lean setting: enable_model_cpu_offload or sequential")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per case (default: torch's)")
    p.add_argument("--repeats", type=int, default=2, help="measured runs per case (the fastest is reported)")
    p.add_argument("--measure", default="both", choices=["both", "time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--timing", default=None, choices=["paired", "isolated"],
                   help="paired: all cases in one process, run in turn (default on cpu); isolated: a process each")
    p.add_argument("--in-process", action="store_true", help="run every case in this process (debugging)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/sample-<device>.json)")
    p.add_argument("--worker", nargs=2, metavar=("TOOL", "SETTING"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or ("full" if args.device == "cuda" else "small")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = worker(*args.worker, args)
        Path(args.result).write_text(json.dumps(asdict(result), default=str))
        return asdict(result)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    spec = SIZES[args.size]
    print(f"image-to-video, {args.size}: {spec['num_frames']} frames of {spec['height']}x{spec['width']}, "
          f"{spec['steps']} Euler steps, guidance {GUIDANCE[0]}->{GUIDANCE[1]}, "
          f"{'fp16' if device.type == 'cuda' else 'fp32'} on {args.device}", flush=True)
    pairs = [(tool, setting) for setting in args.settings.split(",") for tool in args.tools.split(",")]
    timing = args.timing or ("isolated" if device.type == "cuda" else "paired")
    results = []
    if timing == "paired":
        timed = paired_timing(pairs, args)
        for tool, setting in pairs:
            print(f"-- memory: {tool} / {setting}", flush=True)
            result = timed[(tool, setting)]
            mem = worker(tool, setting, argparse.Namespace(**{**vars(args), "measure": "memory"})) \
                if args.in_process else run_isolated(tool, setting, args, "memory", CPU_MEMORY_ENV)
            result.peak_bytes, result.baseline_bytes = mem.peak_bytes, mem.baseline_bytes
            result.detail["memory_run"] = "own process, allocations >= 64 KiB mmap-ed" if mem.error is None else (
                f"failed: {mem.error}")
            results.append(result)
    else:
        for tool, setting in pairs:
            print(f"-- {tool} / {setting}", flush=True)
            if args.in_process:
                try:
                    results.append(worker(tool, setting, args))
                except Exception as exc:  # noqa: BLE001 - a failed case is reported, the others still run
                    results.append(RunResult(tool, setting, error=f"{type(exc).__name__}: {exc}"))
            else:
                results.append(run_case(tool, setting, args))
            if results[-1].error:
                print(f"   failed: {results[-1].error}", flush=True)
    text, ratios = table(results, paired_ratios(results) if timing == "paired" else None)
    print(text)
    report = {"device": args.device, "size": args.size, "timing": timing, "threads": torch.get_num_threads(),
              "settings": {k: v for k, v in spec.items()},
              "guidance": GUIDANCE, "dtype": "fp16" if device.type == "cuda" else "fp32",
              "environment": environment(device), "runs": [asdict(r) for r in results], "ratios": ratios,
              "table": text}
    write_report(report, args.out, RESULTS / f"sample-{args.device}.json")
    return report


if __name__ == "__main__":
    main()
