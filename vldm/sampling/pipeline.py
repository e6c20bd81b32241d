"""Generation from a trained latent diffusion model: image-to-video, text-to-video and text-to-image.

The sampling defaults follow the official SVD sampler (``sgm`` ``EulerEDMSampler`` with
``LinearPredictionGuider``): EDM sigmas, Euler without churn, initial noise scaled by
``sqrt(1 + sigma_max^2)``, per-frame guidance rising linearly; the unconditional pass zeroes the
image/text conditioning and keeps the vector conditioning. This is the seam the memory-planning
sampler plugs into: components in, tensors out, no files or configs here.

Memory: with a :class:`~vldm.sampling.memory_plan.MemoryPlan` (``plan=`` or :meth:`apply_plan`)
the weights are cast and placed per the plan, cond / uncond run batched, one after the other or
not at all, attention / feed-forward are chunked and the latents are decoded in overlapping
chunks (:mod:`vldm.sampling.chunked_decode`); each call records the peak device memory it
measured (``peak_memory``, CUDA only). Without a plan nothing of this happens and results are
those of the plain sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from vldm.conditioning.conditioner import Conditioner
from vldm.conditioning.i2v_inputs import expand_to_frames, i2v_inputs
from vldm.conditioning.t2v_inputs import t2v_inputs
from vldm.diffusion.denoiser import Denoiser
from vldm.diffusion.discretization import sigma_schedule
from vldm.diffusion.guidance import guide, linear_frame_scales
from vldm.diffusion.noise import Generators, randn, seeded_generators
from vldm.diffusion.sampler_config import SamplerConfig
from vldm.diffusion.samplers import SAMPLERS, Denoise
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.sampling.chunked_decode import chunked_decode, iter_chunked_decode, receptive_radius
from vldm.sampling.long_video import LongVideo, denoise_calls, initial_noise, sample_long, segment_count, window_spans
from vldm.sampling.memory_plan import MemoryPlan, decode_overlap, format_bytes

log = logging.getLogger(__name__)


UNCOND_ZERO_KEYS = ("cond_frames", "cond_frames_without_noise", "txt")


class LatentDiffusionSampler:
    """Holds the parts of a trained model needed to sample from it."""

    def __init__(self, network: nn.Module, denoiser: Denoiser, conditioner: Conditioner,
                 first_stage: nn.Module, scale_factor: float, plan: MemoryPlan | None = None,
                 device: torch.device | str | None = None, uncond_text: str = "zero") -> None:
        if uncond_text not in ("zero", "empty"):
            raise ValueError(f"uncond_text must be 'zero' or 'empty', got {uncond_text!r}")
        self.uncond_text = uncond_text
        self.network, self.denoiser, self.conditioner = network, denoiser, conditioner
        self.first_stage, self.scale_factor = first_stage, scale_factor
        self.plan: MemoryPlan | None = None
        self.peak_memory: int | None = None  # bytes, measured by the last image_to_video / text_to_image (CUDA)
        self._device: torch.device | None = None
        self._placement = None
        if plan is not None:
            self.apply_plan(plan, device if device is not None else self.device)

    @classmethod
    def from_model(cls, model: LatentDiffusion, network: nn.Module | None = None) -> "LatentDiffusionSampler":
        """A sampler over ``model``'s parts; ``network`` replaces its UNet (e.g. an EMA copy)."""
        return cls(network if network is not None else model.network, model.denoiser, model.conditioner,
                   model.first_stage_model, float(model.scale_factor), uncond_text=model.uncond_text)

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else next(self.network.parameters()).device

    def apply_plan(self, plan: MemoryPlan, device: torch.device | str) -> None:
        """Cast, place, stream and chunk the components per ``plan`` (replacing an earlier plan)."""
        from vldm.sampling.placement import apply_plan

        self.release_plan()
        self._placement = apply_plan(self, plan, device)
        self.plan, self._device = plan, torch.device(device)

    def release_plan(self) -> None:
        """Take the plan's hooks and chunking off (weights stay where the plan put them)."""
        if self._placement is not None:
            self._placement.remove()
        self.plan, self._placement, self._device = None, None, None

    def memory_report(self) -> str:
        """The plan and the peak measured by the last call, for printing."""
        plan = self.plan.describe() if self.plan is not None else "memory plan: none (everything as loaded)"
        return f"{plan}\n  measured   peak {format_bytes(self.peak_memory)}"

    def _network_call(self) -> Callable[..., torch.Tensor]:
        """The UNet, taking the pipeline's float32 tensors to the plan's dtype and its output back to float32."""
        if self.plan is None:
            return self.network
        dtype = self.plan.torch_dtype

        def run(x: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
            context = None if context is None else context.to(dtype)
            return self.network(x.to(dtype), c_noise, context=context, **kwargs).float()

        return run

    def _start_measuring(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _stop_measuring(self) -> None:
        self.peak_memory = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        if self.peak_memory is not None:
            estimate = self.plan.estimated_peak_bytes if self.plan is not None else None
            log.info("peak device memory %s (plan estimate %s)", format_bytes(self.peak_memory), format_bytes(estimate))

    @torch.no_grad()
    def unconditional(self, inputs: dict) -> dict[str, torch.Tensor]:
        """The unconditional branch: image inputs zeroed, vector conditioning kept (SGM); text zeroed
        (``uncond_text="zero"``, SGM-trained models) or the empty prompt (``"empty"``, SD 2.x / LDM)."""
        if self.uncond_text == "empty" and "txt" in inputs:
            inputs = {**inputs, "txt": [""] * len(inputs["txt"])}
            return self.conditioner(inputs, force_zero=tuple(k for k in UNCOND_ZERO_KEYS if k != "txt"))
        return self.conditioner(inputs, force_zero=UNCOND_ZERO_KEYS)

    def window_denoiser(self, inputs: dict, clips: int, num_frames: int, cfg: SamplerConfig) -> Denoise:
        """``denoise(x, sigma)`` for ``clips`` clips of ``num_frames`` frames conditioned on ``inputs``,
        guidance (batched, sequential or none, per the plan) folded in."""
        guided = not (cfg.min_guidance == 1.0 and cfg.max_guidance == 1.0)
        mode = self.plan.cfg_mode if self.plan is not None else "batched"
        if guided and mode == "none":
            raise ValueError(f"the memory plan has no unconditional pass (cfg_mode none) but guidance goes from "
                             f"{cfg.min_guidance} to {cfg.max_guidance}; plan with guided=True")
        batched = guided and mode == "batched"
        cond = expand_to_frames(self.conditioner(inputs), num_frames)
        if guided:
            uncond = expand_to_frames(self.unconditional(inputs), num_frames)
            if batched:
                both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        scales = linear_frame_scales(num_frames, cfg.min_guidance, cfg.max_guidance)
        extra = {}
        if getattr(getattr(self.network, "config", None), "video", False):
            extra["image_only_indicator"] = torch.zeros(clips * (2 if batched else 1), num_frames, device=self.device)
        network = self._network_call()

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if not guided:
                s = sigma.expand(x.shape[0])
                return self.denoiser(network, x, s, cond, num_frames=num_frames, **extra)
            if not batched:  # sequential: half the batch, two forwards
                s = sigma.expand(x.shape[0])
                out_u = self.denoiser(network, x, s, uncond, num_frames=num_frames, **extra)
                out_c = self.denoiser(network, x, s, cond, num_frames=num_frames, **extra)
                return guide(out_u, out_c, scales, num_frames)
            s = sigma.expand(2 * x.shape[0])
            out_u, out_c = self.denoiser(network, torch.cat([x, x]), s, both, num_frames=num_frames,
                                         **extra).chunk(2)
            return guide(out_u, out_c, scales, num_frames)

        return denoise

    def sample_latents(self, inputs: dict, shape: tuple[int, ...], num_frames: int, cfg: SamplerConfig,
                       generator: Generators = None, long: LongVideo | None = None,
                       segment_inputs: Sequence[dict] | None = None,
                       window_inputs: Callable[[torch.Tensor], dict] | None = None) -> torch.Tensor:
        """Latents ``(b * t, c, h, w)`` for conditioning ``inputs`` of ``b`` samples (``generator``: one,
        or one per sample). ``long``: more frames than the model's window, in windows
        (:mod:`vldm.sampling.long_video`); ``segment_inputs``: one conditioning per window instead of ``inputs``;
        ``window_inputs`` (``extend``): each later window's conditioning from its first frame's latents ``(b, c, h, w)``."""
        clips = shape[0] // num_frames
        sigmas = sigma_schedule(cfg.schedule, cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(self.device)
        if long is None or not long.applies(num_frames):
            denoise = self.window_denoiser(inputs, clips, num_frames, cfg)
            noise = randn(shape, generator).to(self.device)
            x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
            return SAMPLERS[cfg.name](denoise, x, sigmas, progress=cfg.progress)
        spans = window_spans(num_frames, long.window, long.overlap)
        per_window = list(segment_inputs) if segment_inputs else [inputs]
        if len(per_window) not in (1, len(spans)):
            raise ValueError(f"{len(per_window)} conditionings for {len(spans)} windows: give one, or one per window")
        made = [self.window_denoiser(i, clips, long.window, cfg) for i in per_window]
        denoisers = made * len(spans) if len(made) == 1 else made
        noise = initial_noise(shape, clips, spans, long.noise, generator).to(self.device)

        def solve(denoise: Denoise, x: torch.Tensor) -> torch.Tensor:
            return SAMPLERS[cfg.name](denoise, x, sigmas, progress=False)

        def recondition(first: torch.Tensor) -> Denoise:
            return self.window_denoiser(window_inputs(first), clips, long.window, cfg)

        return sample_long(solve, denoisers, noise, sigmas[0], clips, spans, long,
                           denoise_calls(cfg.name, cfg.num_steps), progress=cfg.progress,
                           recondition=recondition if window_inputs is not None else None)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk_size: int | None = None, num_frames: int | None = None,
               overlap: int | None = None) -> torch.Tensor:
        """Latents ``(b * t, c, h, w)`` -> pixels in [-1, 1], ``chunk_size`` frames at a time.

        ``num_frames``: frames per clip (``t``; None: one clip of all latents). A temporal decoder, or
        a memory plan, decodes each clip in chunks overlapping by ``overlap`` frames (default: the
        plan's, or twice the decoder's temporal radius as far as the chunk allows), cross-faded
        (:func:`~vldm.sampling.chunked_decode.chunked_decode`); the plan's ``decode_chunk_size``
        caps ``chunk_size``. An image decoder without a plan decodes plain consecutive chunks.
        """
        z = z / self.scale_factor
        radius = receptive_radius(self.first_stage)
        if self.plan is None and radius == 0:
            chunk = chunk_size or z.shape[0]
            return torch.cat([self.first_stage.decode(z[i:i + chunk])
                              for i in range(0, z.shape[0], chunk)]).clamp(-1, 1)
        t = num_frames or z.shape[0]
        planned = self.plan.decode_chunk_size if self.plan is not None else None
        chunk = min((c for c in (chunk_size, planned) if c), default=None)
        if overlap is None:
            same = self.plan is not None and chunk == planned
            overlap = self.plan.decode_overlap if same else decode_overlap(chunk or t, t, radius)
        dtype = self.plan.torch_vae_dtype if self.plan is not None else None
        return chunked_decode(self.first_stage, z, t, chunk, overlap, radius, dtype).clamp(-1, 1)

    @torch.no_grad()
    def decode_stream(self, z: torch.Tensor, num_frames: int, chunk_size: int | None = None) -> Iterator[torch.Tensor]:
        """Latents of ``b`` clips of ``num_frames`` -> pixel pieces ``(b, t_piece, 3, h, w)`` in [-1, 1], in
        frame order, ``chunk_size`` frames (default: the plan's, else the whole clip) decoded at a time."""
        z = z / self.scale_factor
        radius = receptive_radius(self.first_stage)
        planned = self.plan.decode_chunk_size if self.plan is not None else None
        chunk = min((c for c in (chunk_size, planned) if c), default=None)
        if self.plan is None and radius == 0:
            clips = z.reshape(z.shape[0] // num_frames, num_frames, *z.shape[1:])
            step = chunk or num_frames
            for i in range(0, num_frames, step):
                part = clips[:, i:i + step]
                x = self.first_stage.decode(part.reshape(-1, *z.shape[1:])).clamp(-1, 1)
                yield x.reshape(part.shape[0], part.shape[1], *x.shape[1:])
            return
        same = self.plan is not None and chunk == planned
        overlap = self.plan.decode_overlap if same else decode_overlap(chunk or num_frames, num_frames, radius)
        dtype = self.plan.torch_vae_dtype if self.plan is not None else None
        for piece in iter_chunked_decode(self.first_stage, z, num_frames, chunk, overlap, radius, dtype):
            yield piece.clamp(-1, 1)

    def _video(self, z: torch.Tensor, clips: int, num_frames: int, cfg: SamplerConfig,
               long: LongVideo | None) -> torch.Tensor:
        """Decoded ``(b, t, 3, h, w)``: a long clip window by window, else as :meth:`decode` does."""
        if long is not None and long.applies(num_frames):
            return torch.cat(list(self.decode_stream(z, num_frames, cfg.decode_chunk_size or long.window)), dim=1)
        video = self.decode(z, cfg.decode_chunk_size, num_frames=num_frames)
        return video.reshape(clips, num_frames, *video.shape[1:])

    @torch.no_grad()
    def image_to_video_latents(self, image: torch.Tensor, num_frames: int, fps_id: int = 6,
                               motion_bucket_id: int = 127, cond_aug: float = 0.02,
                               cfg: SamplerConfig = SamplerConfig(), seed: int | Sequence[int] = 0,
                               long: LongVideo | None = None) -> torch.Tensor:
        """The latents ``(b * t, c, h, w)`` :meth:`image_to_video` decodes."""
        if not isinstance(seed, int) and len(seed) != image.shape[0]:
            raise ValueError(f"{len(seed)} seeds for {image.shape[0]} images: give one seed, or one per image")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        generator = seeded_generators(seed)
        image = image.to(self.device) if self.plan is None else image.to(self.device, torch.float32)
        inputs = i2v_inputs(image, fps_id, motion_bucket_id, cond_aug, generator=generator)
        f = self.first_stage.downsample_factor
        c = self.network.config.out_channels
        shape = (image.shape[0] * num_frames, c, image.shape[2] // f, image.shape[3] // f)
        window_inputs = None
        if long is not None and long.condition != "first":
            def window_inputs(first: torch.Tensor) -> dict:
                return self.carried_inputs(first, image, long.condition, fps_id, motion_bucket_id, cond_aug,
                                           generator)
        return self.sample_latents(inputs, shape, num_frames, cfg, generator, long=long, window_inputs=window_inputs)

    @torch.no_grad()
    def carried_inputs(self, first: torch.Tensor, image: torch.Tensor, condition: str, fps_id: torch.Tensor | int,
                       motion_bucket_id: torch.Tensor | int, cond_aug: float,
                       generator: Generators = None) -> dict[str, torch.Tensor]:
        """The i2v inputs of a window starting at latents ``first`` ``(b, c, h, w)``: that frame decoded is the
        conditioning image (noise-augmented for the concatenated latent, as in :func:`i2v_inputs`); with
        ``condition="carried-concat"`` the image embedding stays that of the clip's ``image``."""
        frame = self.decode(first, num_frames=1).to(image)
        inputs = i2v_inputs(frame, fps_id, motion_bucket_id, cond_aug, generator=generator)
        if condition == "carried-concat":
            inputs["cond_frames_without_noise"] = image
        return inputs

    @torch.no_grad()
    def image_to_video(self, image: torch.Tensor, num_frames: int, fps_id: int = 6, motion_bucket_id: int = 127,
                       cond_aug: float = 0.02, cfg: SamplerConfig = SamplerConfig(),
                       seed: int | Sequence[int] = 0, long: LongVideo | None = None) -> torch.Tensor:
        """``image`` ``(b, 3, h, w)`` in [-1, 1] -> video ``(b, t, 3, h, w)`` in [-1, 1].

        ``seed``: one for the batch, or one per image, so that video ``i`` is what a call with
        ``image[i:i+1]`` and ``seed[i]`` gives, whatever the batch. ``long``: more frames than the
        model's window, generated in windows (each window conditioned on ``image``, or with
        ``long.condition`` on its own first frame).
        """
        self._start_measuring()
        z = self.image_to_video_latents(image, num_frames, fps_id, motion_bucket_id, cond_aug, cfg, seed, long)
        video = self._video(z, image.shape[0], num_frames, cfg, long)
        self._stop_measuring()
        return video

    @torch.no_grad()
    def text_to_video_latents(self, captions: Sequence[str], num_frames: int, height: int, width: int,
                              fps_id: torch.Tensor | int = 6, motion_bucket_id: torch.Tensor | int = 127,
                              cfg: SamplerConfig = SamplerConfig(), seed: int | Sequence[int] = 0,
                              long: LongVideo | None = None) -> torch.Tensor:
        """The latents ``(b * t, c, h, w)`` :meth:`text_to_video` decodes."""
        if not isinstance(seed, int) and len(seed) != len(captions):
            raise ValueError(f"{len(seed)} seeds for {len(captions)} captions: give one seed, or one per caption")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        if long is not None and long.condition != "first":
            raise ValueError(f"long.condition={long.condition} conditions each window on its first frame, an "
                             "image-to-video input; text-to-video windows take the prompt (or long.prompts)")
        generator = seeded_generators(seed)
        inputs = t2v_inputs(captions, fps_id, motion_bucket_id, self.device)
        segments = None
        if long is not None and long.prompts is not None:
            count = segment_count(num_frames, long)
            if len(long.prompts) != count:
                raise ValueError(f"{len(long.prompts)} segment prompts for {num_frames} frames in {count} windows "
                                 f"(window {long.window}, overlap {long.overlap}): give exactly {count} prompts, "
                                 f"one per window, or none")
            segments = [t2v_inputs([p] * len(captions), fps_id, motion_bucket_id, self.device) for p in long.prompts]
        f = self.first_stage.downsample_factor
        shape = (len(captions) * num_frames, self.network.config.out_channels, height // f, width // f)
        if segments is not None and not long.applies(num_frames):
            inputs = segments[0]
        return self.sample_latents(inputs, shape, num_frames, cfg, generator, long=long, segment_inputs=segments)

    @torch.no_grad()
    def text_to_video(self, captions: Sequence[str], num_frames: int, height: int, width: int,
                      fps_id: torch.Tensor | int = 6, motion_bucket_id: torch.Tensor | int = 127,
                      cfg: SamplerConfig = SamplerConfig(), seed: int | Sequence[int] = 0,
                      long: LongVideo | None = None) -> torch.Tensor:
        """Captions -> videos ``(b, t, 3, h, w)`` in [-1, 1] (the text-to-video base model).

        ``seed``: one for the batch, or one per caption, so that video ``i`` is what a call with
        ``captions[i:i+1]`` and ``seed[i]`` gives, whatever the batch. The guidance scale rises from
        ``cfg.min_guidance`` to ``cfg.max_guidance`` over the frames: constant when they are equal.
        ``long``: more frames than the model's window, in windows (``long.prompts``: one caption per window).
        """
        self._start_measuring()
        z = self.text_to_video_latents(captions, num_frames, height, width, fps_id, motion_bucket_id, cfg, seed, long)
        video = self._video(z, len(captions), num_frames, cfg, long)
        self._stop_measuring()
        return video

    def video_stream(self, latents: Callable[[], torch.Tensor], num_frames: int, cfg: SamplerConfig,
                     chunk: int | None = None) -> Iterator[torch.Tensor]:
        """``latents()`` sampled, then decoded piece by piece ``(b, t_piece, 3, h, w)`` in [-1, 1] (``chunk``
        frames at a time, e.g. one window), for a writer that takes frames as they come; the peak is
        measured over the whole."""
        self._start_measuring()
        z = latents()
        yield from self.decode_stream(z, num_frames, cfg.decode_chunk_size or chunk)
        self._stop_measuring()

    @torch.no_grad()
    def text_to_image(self, captions: list[str], height: int, width: int, cfg: SamplerConfig = SamplerConfig(),
                      seed: int = 0) -> torch.Tensor:
        """Captions -> images ``(b, 3, h, w)`` in [-1, 1]."""
        self._start_measuring()
        generator = torch.Generator().manual_seed(seed)
        f = self.first_stage.downsample_factor
        shape = (len(captions), self.network.config.out_channels, height // f, width // f)
        z = self.sample_latents({"txt": list(captions)}, shape, 1, cfg, generator)
        images = self.decode(z, cfg.decode_chunk_size, num_frames=1)
        self._stop_measuring()
        return images
