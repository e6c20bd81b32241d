"""Clips longer than the model's trained length, generated in windows of that length and stitched.

Two methods, both wrapping the per-window denoiser so that the samplers of
:mod:`vldm.diffusion.samplers` run unchanged:

- ``windows``: overlapping context windows denoised together at every step; each step runs the
  denoiser on every window and blends the overlapping predictions with a smooth weight
  (Gen-L-Video, Wang et al. 2023; the context options of AnimateDiff-Evolved). ``noise=freenoise``
  draws the first window's noise and gives every later frame a shuffled frame of it (FreeNoise's
  noise rescheduling, Qiu et al. 2023).
- ``extend``: autoregressive extension; each new window starts where the last one ended, its first
  frames replaced at every step by the previous window's last latents re-noised to the current
  sigma with the noise those frames were drawn with (inpainting by replacement, as in RePaint /
  SDEdit-style conditioning), so nothing is decoded and re-encoded between windows.
  ``condition=carried`` (image-to-video): window ``j`` is conditioned on its own first frame, a
  carried one, instead of the clip's image, as the model was trained (a clip's first frame is its
  conditioning image) and as autoregressive image-to-video extension does (SVD, Blattmann et al.
  2023, conditions on the last frame); ``carried-concat`` takes only the concatenated latent from
  it and keeps the first image's embedding. ``reconstruction=w`` adds reconstruction guidance (Ho et
  al. 2022, "Video Diffusion Models"): the new frames' prediction moved by ``-w`` times the gradient,
  with respect to the window's noisy latents, of the squared error of the carried frames' prediction.

``anchor``: each window's per-channel latent mean and std matched to the first window's, against
colour and exposure drift. With ``num_frames`` at most the window every method is the plain sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vldm.diffusion.noise import Generators, randn

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sample = Callable[[Denoise, torch.Tensor], torch.Tensor]  # (denoise, noise scaled to sigma_max) -> latents

METHODS = ("none", "windows", "extend")
NOISES = ("independent", "freenoise")
CONDITIONS = ("first", "carried", "carried-concat")
Recondition = Callable[[torch.Tensor], Denoise]  # a window's first-frame latents (clips, c, h, w) -> its denoiser


@dataclass(frozen=True)
class LongVideo:
    """How to generate more frames than the model's ``window`` (its trained clip length).

    ``overlap``: frames shared by neighbouring windows (None: half the window); ``condition``: what
    each window of an image-to-video clip is conditioned on (``first``: the clip's image; ``carried``
    / ``carried-concat``, ``extend`` only: the window's first frame, see the module doc);
    ``prompts``: text-to-video, one caption per window (None: the clip's caption for every window).
    """

    method: str = "none"
    window: int | None = None
    overlap: int | None = None
    noise: str = "independent"
    anchor: bool = False
    condition: str = "first"
    reconstruction: float = 0.0
    prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"long.method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.noise not in NOISES:
            raise ValueError(f"long.noise must be one of {', '.join(NOISES)}; got {self.noise!r}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"long.condition must be one of {', '.join(CONDITIONS)}; got {self.condition!r}")
        if self.condition != "first" and self.method != "extend":
            raise ValueError(f"long.condition={self.condition} conditions each window on the frames carried into "
                             f"it: it needs long.method=extend, got long.method={self.method}")
        if self.reconstruction < 0 or (self.reconstruction > 0 and self.method != "extend"):
            raise ValueError(f"long.reconstruction guides the frames carried into a window: it needs "
                             f"long.method=extend and a weight of at least 0, got {self.reconstruction} with "
                             f"long.method={self.method}")
        if self.overlap is None and self.window is not None:
            object.__setattr__(self, "overlap", self.window // 2)
        if self.method != "none":
            if self.window is None or self.window < 1:
                raise ValueError(f"long.method={self.method} needs the model's window (its trained clip length) of "
                                 f"at least 1 frame, got {self.window}")
            if not 0 <= self.overlap < self.window:
                raise ValueError(f"long.overlap must be at least 0 and smaller than the window of {self.window} "
                                 f"frames (the model's trained clip length), got {self.overlap}")
            if self.method == "extend" and self.overlap < 1:
                raise ValueError("long.method=extend carries the previous window's last frames: long.overlap must "
                                 "be at least 1")

    def applies(self, num_frames: int) -> bool:
        """Whether ``num_frames`` is generated in windows (a method is set and the clip is longer than one)."""
        return self.method != "none" and num_frames > (self.window or num_frames)


def window_spans(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` windows of exactly ``window`` frames covering ``range(num_frames)``.

    Windows step by ``window - overlap``; the last one ends at the clip's end (it overlaps its
    neighbour by ``overlap`` frames or more). A clip of at most ``window`` frames is one span.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if num_frames <= window:
        return [(0, num_frames)]
    stride = window - overlap
    count = math.ceil((num_frames - overlap) / stride)
    starts = [min(i * stride, num_frames - window) for i in range(count)]
    return [(s, s + window) for s in starts]


def blend_weights(spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-frame weight of each window: 1 inside, a raised-cosine ramp (strictly above 0) across the
    frames it shares with each neighbour, so that two overlapping windows' weights sum to one."""
    weights = []
    for j, (s, e) in enumerate(spans):
        w = torch.ones(e - s, dtype=torch.float64)
        if j > 0:
            n = spans[j - 1][1] - s
            ramp = torch.sin(0.5 * math.pi * torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)) ** 2
            w[:n] *= ramp
        if j + 1 < len(spans):
            n = e - spans[j + 1][0]
            ramp = torch.cos(0.5 * math.pi * torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)) ** 2
            w[e - s - n:] *= ramp
        weights.append(w)
    return weights


def segment_count(num_frames: int, long: LongVideo) -> int:
    """How many windows ``num_frames`` takes under ``long`` (one when it is not generated in windows)."""
    if not long.applies(num_frames):
        return 1
    return len(window_spans(num_frames, long.window, long.overlap))


def initial_noise(shape: tuple[int, ...], clips: int, spans: Sequence[tuple[int, int]], noise: str,
                  generator: Generators) -> torch.Tensor:
    """N(0, I) latents ``(clips * t, c, h, w)``; ``freenoise``: the first window's frames drawn, every
    later frame a frame of the first window, shuffled per window (FreeNoise)."""
    if noise == "independent":
        return randn(shape, generator)
    t, window = shape[0] // clips, spans[0][1] - spans[0][0]
    first = randn((clips * window, *shape[1:]), generator).reshape(clips, window, *shape[1:])
    gens = [generator] * clips if generator is None or isinstance(generator, torch.Generator) else list(generator)
    out = first.new_empty(clips, t, *shape[1:])
    out[:, :window] = first
    done = window
    for _, e in spans[1:]:
        fresh = e - done
        if fresh <= 0:
            continue
        for i, g in enumerate(gens):
            out[i, done:e] = first[i, torch.randperm(window, generator=g)[:fresh]]
        done = e
    return out.reshape(shape)


def _frames(x: torch.Tensor, clips: int) -> torch.Tensor:
    return x.reshape(clips, x.shape[0] // clips, *x.shape[1:])


def _fold(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def windowed_denoiser(denoisers: Sequence[Denoise], spans: Sequence[tuple[int, int]], clips: int,
                      bar: tqdm | None = None) -> Denoise:
    """One denoise over the whole clip: window ``j``'s prediction from ``denoisers[j]``, overlapping
    predictions averaged with :func:`blend_weights`."""
    weights = blend_weights(spans)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        xs = _frames(x, clips)
        total = torch.zeros_like(xs)
        norm = torch.zeros(xs.shape[1], dtype=xs.dtype, device=xs.device)
        for (s, e), d, w in zip(spans, denoisers, weights):
            out = _frames(d(_fold(xs[:, s:e]).contiguous(), sigma), clips)
            w = w.to(xs)
            total[:, s:e] += out * w.reshape(1, -1, *([1] * (xs.ndim - 2)))
            norm[s:e] += w
            if bar is not None:
                bar.update(1)
        return _fold(total / norm.reshape(1, -1, *([1] * (xs.ndim - 2))))

    return denoise


def carried_denoiser(denoise: Denoise, known: torch.Tensor, known_noise: torch.Tensor, clips: int,
                     reconstruction: float = 0.0) -> Denoise:
    """``denoise`` on a window whose first ``k`` frames are known latents ``known`` ``(clips, k, ...)``:
    those frames enter as ``known + sigma * known_noise`` and come out as ``known``; ``reconstruction``:
    the other frames' prediction minus that weight times the gradient of ``0.5 * |D(x)[:k] - known|^2``
    with respect to their noisy latents (reconstruction guidance)."""
    k = known.shape[1]

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        xs = _frames(x, clips).clone()
        xs[:, :k] = known + sigma * known_noise
        if reconstruction == 0:
            out = _frames(denoise(_fold(xs), sigma), clips).clone()
        else:
            with torch.enable_grad():
                xg = _fold(xs).detach().requires_grad_(True)
                pred = _frames(denoise(xg, sigma), clips)
                error = 0.5 * (pred[:, :k] - known).pow(2).sum()
                (grad,) = torch.autograd.grad(error, xg)
            out = (pred.detach() - reconstruction * _frames(grad, clips)).clone()
        out[:, :k] = known
        return _fold(out)

    return run


def channel_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip, per-channel mean and std of latents ``(clips, t, c, h, w)`` over frames and pixels."""
    return z.mean(dim=(1, 3, 4), keepdim=True), z.std(dim=(1, 3, 4), keepdim=True).clamp_min(1e-6)


def anchored(z: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``z`` ``(clips, t, c, h, w)`` with its per-channel mean / std moved to ``reference``'s."""
    mean, std = channel_stats(z)
    return (z - mean) / std * reference[1] + reference[0]


def anchor_windows(z: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Every window's per-channel statistics matched to the first window's, the per-window affine
    corrections blended per frame with :func:`blend_weights` (no step at the seams)."""
    ref_mean, ref_std = channel_stats(z[:, spans[0][0]:spans[0][1]])
    scale = torch.zeros(z.shape[0], z.shape[1], z.shape[2], 1, 1, dtype=z.dtype)
    shift, norm = torch.zeros_like(scale), torch.zeros(z.shape[1], dtype=z.dtype)
    for (s, e), w in zip(spans, blend_weights(spans)):
        mean, std = channel_stats(z[:, s:e])
        w = w.to(z).reshape(1, -1, 1, 1, 1)
        scale[:, s:e] += w * (ref_std / std)
        shift[:, s:e] += w * (ref_mean - mean * ref_std / std)
        norm[s:e] += w.flatten()
    norm = norm.reshape(1, -1, 1, 1, 1)
    return z * (scale / norm) + shift / norm


def denoise_calls(sampler: str, steps: int) -> int:
    """How often a sampler calls ``denoise`` over ``steps`` steps (for the progress bar)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sample_long(sample: Sample, denoisers: Sequence[Denoise], noise: torch.Tensor, sigma_start: torch.Tensor,
                clips: int, spans: Sequence[tuple[int, int]], long: LongVideo, calls: int,
                progress: bool = False, recondition: Recondition | None = None) -> torch.Tensor:
    """Latents ``(clips * t, c, h, w)`` of a long clip: ``denoisers[j]`` denoises window ``j``,
    ``sample(denoise, x)`` runs the solver from ``x`` at ``sigma_start``, ``noise`` is N(0, I);
    ``recondition`` (``extend``): window ``j > 0``'s denoiser made from its first frame's latents instead."""
    bar = tqdm(total=calls * len(spans), desc=f"sampling {len(spans)} windows", disable=not progress, leave=False)
    scale = torch.sqrt(1.0 + sigma_start ** 2)
    try:
        if long.method == "windows":
            z = _frames(sample(windowed_denoiser(denoisers, spans, clips, bar), noise * scale), clips)
            return _fold(anchor_windows(z, spans) if long.anchor else z)
        return _fold(_extend(sample, denoisers, _frames(noise, clips), scale, clips, spans, long.anchor, bar,
                             recondition, long.reconstruction))
    finally:
        bar.close()


def _extend(sample: Sample, denoisers: Sequence[Denoise], noise: torch.Tensor, scale: torch.Tensor, clips: int,
            spans: Sequence[tuple[int, int]], anchor: bool, bar: tqdm,
            recondition: Recondition | None = None, reconstruction: float = 0.0) -> torch.Tensor:
    """Window after window, each carrying the frames it shares with the one before (see the module doc)."""
    z, reference, done = torch.empty_like(noise), None, 0
    for (s, e), d in zip(spans, denoisers):
        eps = noise[:, s:e]
        if s < done:
            if recondition is not None:
                d = recondition(z[:, s])
            d = carried_denoiser(d, z[:, s:done], eps[:, :done - s], clips, reconstruction)
        d = _counted(d, bar)
        window = _frames(sample(d, _fold(eps * scale).contiguous()), clips)
        if anchor:
            reference = channel_stats(window) if reference is None else reference
            window = anchored(window, reference)
        z[:, done:e] = window[:, done - s:]
        done = e
    return z


def _counted(denoise: Denoise, bar: tqdm) -> Denoise:
    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        bar.update(1)
        return denoise(x, sigma)

    return run
