"""Memory as a budget: choose how to sample within ``max_memory``, as fast as that allows.

The planner estimates the peak of the three phases of image-to-video sampling — conditioning
(CLIP image tower, VAE encoding of the conditioning frame), denoising (the UNet, once or twice
per step) and decoding — as resident weights + weights streamed in for the running part +
activations (:mod:`vldm.sampling.memory_stats`), and picks the fastest plan whose every phase
fits. Faster settings come first; it degrades in this order:

1. all weights resident, cond/uncond batched, nothing chunked, the clip decoded in one go;
2. per phase: cond and uncond one after the other (half the UNet batch), then feed-forward (and,
   without a memory-efficient attention kernel, attention) in smaller and smaller chunks;
   decoding in fewer frames per chunk, neighbours overlapping so seams don't flicker;
3. VAE and encoders streamed (moved to the GPU only for their forward), then the VAE in the
   plan's dtype instead of float32 (the official SVD runs its first stage without autocast);
4. UNet streamed block by block;
5. fp16 weights (only if a wider dtype was asked for).

``describe()`` prints the choice; the sampler reports the peak it then measured.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import torch

from vldm.sampling.memory_stats import ModelMemoryStats

__all__ = ["MemoryPlan", "ModelMemoryStats", "parse_memory", "plan_memory", "plan_for", "format_bytes"]

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
CHUNKS = (65536, 32768, 16384, 8192, 4096, 2048, 1024)  # token rows per attention / feed-forward chunk
CUDA_RESERVE = 512 * 2**20  # budget=None on CUDA: free memory minus this (context, cuBLAS workspaces)


def parse_memory(value: str | int | float | None) -> int | None:
    """``"8GB"`` (10^9), ``"8GiB"`` / ``"8G"`` (2^30), ``"512MB"``, ``"1.5TiB"``, ``123`` (bytes).

    ``None``, ``"auto"``, ``"none"`` -> None (plan for the device's free memory).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none", "null")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in UNITS:
            raise ValueError(f"cannot read memory size {value!r}: use e.g. 8GB, 8GiB, 512MB or a number of bytes")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * UNITS[unit])
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


def format_bytes(n: float | None) -> str:
    if n is None:
        return "not measured"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


@dataclass
class MemoryPlan:
    """How to sample: dtypes, where each component lives, guidance batching, chunking, decoding.

    Placement ``"device"``: resident on the execution device; ``"stream"``: kept on the CPU and
    moved in just for its forward (the UNet block by block). ``cfg_mode``: ``"batched"`` (cond and
    uncond in one forward), ``"sequential"`` (two forwards), ``"none"`` (guidance is 1 everywhere:
    no unconditional pass). Chunks are token rows (None: unchunked); ``decode_chunk_size`` frames
    per decoder call (None: whole clip) with ``decode_overlap`` frames shared by neighbours.
    The default is the fastest plan: everything resident, batched, float32, nothing chunked.
    """

    dtype: str = "fp32"
    vae_dtype: str = "fp32"
    unet: str = "device"
    image_encoder: str = "device"
    cond_frame_encoder: str = "device"
    vae_decoder: str = "device"
    cfg_mode: str = "batched"
    attention_chunk: int | None = None
    ff_chunk: int | None = None
    decode_chunk_size: int | None = None
    decode_overlap: int = 0
    budget_bytes: int | None = None
    estimates: dict[str, int] = field(default_factory=dict)  # phase -> estimated peak bytes

    def __post_init__(self) -> None:
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(DTYPES)}, got {getattr(self, name)!r}")
        for name in ("unet", "image_encoder", "cond_frame_encoder", "vae_decoder"):
            if getattr(self, name) not in ("device", "stream"):
                raise ValueError(f"placement of {name} must be 'device' or 'stream', got {getattr(self, name)!r}")
        if self.cfg_mode not in ("batched", "sequential", "none"):
            raise ValueError(f"cfg_mode must be batched, sequential or none, got {self.cfg_mode!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_vae_dtype(self) -> torch.dtype:
        return DTYPES[self.vae_dtype]

    @property
    def estimated_peak_bytes(self) -> int | None:
        return max(self.estimates.values()) if self.estimates else None

    def as_dict(self) -> dict:
        return {**asdict(self), "estimated_peak_bytes": self.estimated_peak_bytes}

    def describe(self) -> str:
        """One readable block for the console."""
        budget = "none (no limit)" if self.budget_bytes is None else format_bytes(self.budget_bytes)
        place = " | ".join(f"{label}: {getattr(self, name)}" for name, label in (
            ("unet", "UNet"), ("image_encoder", "image encoder"), ("cond_frame_encoder", "cond-frame encoder"),
            ("vae_decoder", "VAE decoder")))
        cfg = {"batched": "batched (cond + uncond in one forward)", "sequential": "sequential (cond, then uncond)",
               "none": "none (guidance 1: no unconditional pass)"}[self.cfg_mode]
        chunk = " | ".join(f"{label}: {'off' if v is None else f'{v} tokens'}"
                           for label, v in (("attention", self.attention_chunk), ("feed-forward", self.ff_chunk)))
        decode = "whole clip at once" if self.decode_chunk_size is None else (
            f"{self.decode_chunk_size} frame{'s' if self.decode_chunk_size > 1 else ''} per chunk, "
            f"{self.decode_overlap} overlapping")
        lines = [f"memory plan (budget {budget}, estimated peak {format_bytes(self.estimated_peak_bytes)})",
                 f"  weights    {self.dtype} (VAE {self.vae_dtype})", f"  placement  {place}",
                 f"  guidance   {cfg}", f"  chunking   {chunk}", f"  decode     {decode}"]
        if self.estimates:
            lines.append("  estimates  " + " | ".join(f"{k}: {format_bytes(v)}" for k, v in self.estimates.items()))
        return "\n".join(lines)


def _bytes(dtype: str) -> int:
    return torch.tensor([], dtype=DTYPES[dtype]).element_size()


def decode_overlap(chunk: int, num_frames: int, radius: int) -> int:
    """Frames shared by neighbouring decode chunks: up to the exact hand-over (``2 * radius``), and at
    most a third of the chunk.

    Overlap costs decoding time (a clip of ``t`` frames decodes about ``t * chunk / (chunk - overlap)``
    frames), so it is capped at ``chunk // 3`` (at most 1.5x the frames); chunks of 2 frames, which
    only the tightest budgets pick, get none -- overlapping them would double the decode.
    """
    if chunk >= num_frames or radius == 0:
        return 0
    return min(2 * radius, chunk // 3)


@dataclass(frozen=True)
class _Shape:
    num_frames: int
    latent_px: int
    batch: int
    guided: bool
    efficient_attention: bool


def _phase_estimates(plan: MemoryPlan, stats: ModelMemoryStats, shape: _Shape) -> dict[str, int]:
    """Estimated peak bytes of each phase of sampling under ``plan``."""
    p, b_w, b_v = stats.params, _bytes(plan.dtype), _bytes(plan.vae_dtype)
    weights = {"unet": p["unet"] * b_w, "image_encoder": p["image_encoder"] * b_w,
               "cond_frame_encoder": p["cond_frame_encoder"] * b_v, "vae_decoder": p["vae_decoder"] * b_v}
    resident = p["unet_rest"] * b_w + p["vae_rest"] * b_v + sum(
        w for name, w in weights.items() if getattr(plan, name) == "device")

    def streamed(name: str) -> int:
        return weights[name] if getattr(plan, name) == "stream" else 0

    b, t, px = shape.batch, shape.num_frames, shape.latent_px
    latents = 8 * b * t * stats.unet_in_channels * px * 4  # sampler state (x, noise, d, concat cond ...) in fp32
    encode = stats.encode_activation_elements(b, px, shape.efficient_attention) * b_v
    towers = stats.image_encoder_elements * b * b_w
    conditioning = resident + max(streamed("image_encoder") + towers,
                                  streamed("cond_frame_encoder") + encode)
    frames = b * t * (2 if plan.cfg_mode == "batched" and shape.guided else 1)
    unet_block = p["unet_block_max"] * b_w if plan.unet == "stream" else 0
    acts = stats.unet_activation_elements(frames, px, t, plan.attention_chunk, plan.ff_chunk,
                                          shape.efficient_attention) * b_w
    denoising = resident + unet_block + latents + acts
    chunk = min(plan.decode_chunk_size or t, t)
    pixels = 2 * b * t * 3 * px * stats.downsample_factor**2 * 4  # output frames in fp32, and the clamped copy
    decoding = resident + streamed("vae_decoder") + latents + pixels + int(
        stats.decode_activation_elements(b * chunk, px, shape.efficient_attention) * b_v)
    return {"conditioning": int(conditioning), "denoising": int(denoising), "decoding": int(decoding)}


def _unet_settings(guided: bool, efficient_attention: bool) -> list[tuple[str, int | None, int | None]]:
    """(cfg_mode, attention_chunk, ff_chunk), fastest first."""
    modes = ["batched", "sequential"] if guided else ["none"]
    settings = [(m, None, None) for m in modes]
    settings += [(modes[-1], None if efficient_attention else c, c) for c in CHUNKS]
    return settings


def _placements(dtype: str) -> list[dict[str, str]]:
    lean = {"image_encoder": "stream", "cond_frame_encoder": "stream", "vae_decoder": "stream"}
    ladder = [{"unet": "device", "vae_dtype": "fp32"}, {"unet": "device", "vae_dtype": "fp32", **lean}]
    if dtype != "fp32":
        ladder.append({"unet": "device", "vae_dtype": dtype, **lean})
    ladder.append({"unet": "stream", "vae_dtype": "fp32", **lean})
    if dtype != "fp32":
        ladder.append({"unet": "stream", "vae_dtype": dtype, **lean})
    return ladder


def plan_memory(budget_bytes: int | None, stats: ModelMemoryStats, num_frames: int, latent_hw: tuple[int, int],
                batch: int = 1, guided: bool = True, device: torch.device | str = "cuda", *,
                dtype: torch.dtype | str | None = None, headroom: float = 0.1,
                efficient_attention: bool = True) -> MemoryPlan:
    """The fastest :class:`MemoryPlan` whose estimated peak stays within ``budget_bytes * (1 - headroom)``.

    ``budget_bytes=None``: the free memory of a CUDA ``device`` minus a reserve; on other devices no
    limit (the fastest plan). ``dtype``: the weight dtype wanted (default: the weights' dtype);
    fp16 is used instead only when nothing in that dtype fits. ``efficient_attention``: attention
    runs in a kernel that never materialises the score matrix (SDPA / xformers: True on CUDA).
    Raises ``MemoryError`` naming the leanest plan's estimate when even that does not fit.
    """
    device = torch.device(device)
    if budget_bytes is None and device.type == "cuda" and torch.cuda.is_available():
        budget_bytes = max(torch.cuda.mem_get_info(device)[0] - CUDA_RESERVE, 0)
    wanted = DTYPE_NAMES[stats.dtype] if dtype is None else (dtype if isinstance(dtype, str) else DTYPE_NAMES[dtype])
    shape = _Shape(num_frames, latent_hw[0] * latent_hw[1], batch, guided, efficient_attention)
    full = MemoryPlan(dtype=wanted, vae_dtype="fp32", cfg_mode="batched" if guided else "none",
                      budget_bytes=budget_bytes)
    if budget_bytes is None:
        return replace(full, estimates=_phase_estimates(full, stats, shape))
    available = budget_bytes * (1.0 - headroom)
    leanest: MemoryPlan | None = None
    dtypes = [wanted] + (["fp16"] if wanted == "fp32" else [])
    ladder = [(dt, placement) for dt in dtypes for placement in _placements(dt)]
    for i, (dt, placement) in enumerate(ladder):
        # a temporal decoder decoding single frames has no temporal context: only as the last resort
        min_chunk = 2 if stats.temporal_radius > 0 and i < len(ladder) - 1 else 1
        plan = _fit_phases(replace(full, dtype=dt, **placement), stats, shape, available, min_chunk)
        if max(plan.estimates.values()) <= available:
            return plan
        leanest = plan
    assert leanest is not None
    raise MemoryError(f"no sampling plan fits in {format_bytes(budget_bytes)} (planning for "
                      f"{format_bytes(available)} after {headroom:.0%} headroom): the leanest needs about "
                      f"{format_bytes(leanest.estimated_peak_bytes)}\n{leanest.describe()}\n"
                      f"use fewer frames, a smaller size, or a larger max_memory")


def _fit_phases(plan: MemoryPlan, stats: ModelMemoryStats, shape: _Shape, available: float,
                min_chunk: int = 1) -> MemoryPlan:
    """Fastest UNet setting and largest decode chunk that fit with this placement (or the leanest ones)."""
    for mode, attn, ff in _unet_settings(shape.guided, shape.efficient_attention):
        plan = replace(plan, cfg_mode=mode, attention_chunk=attn, ff_chunk=ff)
        if _phase_estimates(plan, stats, shape)["denoising"] <= available:
            break
    t = shape.num_frames
    for chunk in range(t, min(min_chunk, t) - 1, -1):
        plan = replace(plan, decode_chunk_size=None if chunk == t else chunk,
                       decode_overlap=decode_overlap(chunk, t, stats.temporal_radius))
        if _phase_estimates(plan, stats, shape)["decoding"] <= available:
            break
    return replace(plan, estimates=_phase_estimates(plan, stats, shape))


def plan_for(model: object, budget: int | str | None, num_frames: int, height: int, width: int,
             guided: bool = True, device: torch.device | str = "cuda", batch: int = 1,
             dtype: torch.dtype | str | None = None, **kwargs) -> MemoryPlan:
    """The entry point: a plan for a ``DiffusionModule`` / ``LatentDiffusionSampler`` and a clip size.

    ``budget``: bytes or a string such as ``"8GB"`` (None: the device's free memory).
    """
    stats = ModelMemoryStats.from_module(model)
    f = stats.downsample_factor
    return plan_memory(parse_memory(budget), stats, num_frames, (height // f, width // f), batch, guided, device,
                       dtype=dtype, **kwargs)
