"""One LightningModule for the three stages of the SVD recipe.

A stage is configuration: which network (image UNet, or video UNet after :func:`inflate`),
which conditioner (text for stage 1; CLIP image + conditioning-frame latent + fps / motion /
noise-augmentation vector for image-to-video), which data, which parameters train. The
attribute names give checkpoints the SGM layout: ``model.diffusion_model.*``,
``first_stage_model.*``, ``conditioner.embedders.{i}.*``.

Training loss (Karras et al., 2022): ``lambda(sigma) ||D(z + sigma n; sigma) - z||^2`` with one
``sigma`` per video (all frames share it), ``z`` the scaled autoencoder latent.

Batches are pixels (``video`` or ``jpg``) or pre-encoded clips from :mod:`vldm.jobs.latent_cache`
(``latents`` [+ ``latents_logvar``], ``cond_frame``, ``cached.<i>``): then the first-stage encoder and
the cached embedders are skipped, and the random draws happen in the same order, so a cached batch
gives the loss of its video batch for the same generator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from vldm.conditioning.conditioner import Conditioner, EmbedderSpec
from vldm.conditioning.i2v_inputs import LogNormalCondAug, expand_to_frames, i2v_inputs
from vldm.conditioning.scalar_embedders import ConditioningFrameEncoder
from vldm.diffusion.denoiser import Denoiser
from vldm.nn.autoencoder import DiagonalGaussian
from vldm.nn.inflate import temporal_parameter_names
from vldm.nn.unet import UNet
from vldm.sampling.pipeline import LatentDiffusionSampler, SamplerConfig
from vldm.training.ema import EMA
from vldm.training.optim import configure

log = logging.getLogger(__name__)

CACHED_PREFIX = "cached."  # batch key of a pre-computed embedder output: cached.<embedder index>


class DiffusionWrapper(nn.Module):
    """Holds the network as ``diffusion_model`` (the SGM name) and calls it."""

    def __init__(self, network: UNet) -> None:
        super().__init__()
        self.diffusion_model = network

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.diffusion_model(x, c_noise, **kwargs)


class DiffusionModule(pl.LightningModule):
    def __init__(self, network: UNet, first_stage: nn.Module, conditioner: Conditioner, denoiser: Denoiser,
                 sigma_sampler: Any, loss_weighting: Any, scale_factor: float | None = 0.18215, lr: float = 1e-4,
                 weight_decay: float = 0.0, ema_decay: float | None = 0.999, trainable: str = "all",
                 image_to_video: bool = False, cond_aug: LogNormalCondAug | None = None,
                 sampler: SamplerConfig | dict | None = None, sample_dir: str | None = None,
                 sample_fps: int = 8, lr_schedule: str = "constant", warmup_steps: int = 0,
                 uncond_text: str = "zero") -> None:
        super().__init__()
        self.model = DiffusionWrapper(network)
        self.first_stage_model = first_stage.eval().requires_grad_(False)
        for embedder in conditioner.embedders:  # the conditioning frame uses the first stage unless given its own
            if isinstance(embedder, ConditioningFrameEncoder) and embedder.encoder is None:
                embedder.encoder = self.first_stage_model
        self.conditioner = conditioner.requires_grad_(False)
        self.denoiser = denoiser
        self.sigma_sampler, self.loss_weighting = sigma_sampler, loss_weighting
        # scale_factor=None: set it to 1 / std of the first training batch's latents and keep it
        # in the state dict (LDM's ``scale_by_std``); a fixed value (SD: 0.18215) is not saved.
        self.scale_by_std = scale_factor is None
        self.register_buffer("scale_factor", torch.tensor(-1.0 if scale_factor is None else float(scale_factor)),
                             persistent=self.scale_by_std)
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps
        self.image_to_video = image_to_video
        self.cond_aug = cond_aug or LogNormalCondAug()
        self.sampler_cfg = sampler if isinstance(sampler, SamplerConfig) else SamplerConfig(**(sampler or {}))
        self.sample_dir, self.sample_fps = sample_dir, sample_fps
        self.uncond_text = uncond_text  # guidance's text branch: "zero" (SGM training) or "empty" prompt (SD 2.x)
        self.set_trainable(trainable)
        self.model_ema = EMA(network, ema_decay) if ema_decay else None

    @property
    def network(self) -> UNet:
        return self.model.diffusion_model

    def set_trainable(self, which: str) -> None:
        """``all``: every network weight trains; ``temporal``: only what inflation added trains —
        the temporal layers, the vector-conditioning embedding and the input conv (whose new
        channels read the conditioning-frame latent); the other spatial layers stay frozen."""
        if which not in ("all", "temporal"):
            raise ValueError(f"trainable must be 'all' or 'temporal', got {which!r}")
        temporal = temporal_parameter_names(self.network)
        if which == "temporal" and not temporal:
            raise ValueError("trainable=temporal needs a video network (this one has no temporal layers)")
        for name, p in self.network.named_parameters():
            new = name in temporal or name.startswith(("label_emb.", "input_blocks.0.0."))
            p.requires_grad_(which == "all" or new)

    def train(self, mode: bool = True) -> "DiffusionModule":
        super().train(mode)
        self.first_stage_model.eval()
        return self

    # ---------------------------------------------------------------- data -> loss
    @staticmethod
    def is_latent_batch(batch: dict) -> bool:
        """A batch of pre-encoded clips (:mod:`vldm.data.latent_dataset`) rather than pixels."""
        return "latents" in batch

    def _frames(self, batch: dict) -> torch.Tensor:
        """``(b, t, 3, h, w)`` pixels from a video batch or an image batch (t = 1)."""
        if "video" in batch:
            return batch["video"]
        if "jpg" in batch:
            return batch["jpg"][:, None]
        raise KeyError(f"batch has neither 'video' nor 'jpg' nor 'latents' (keys: {sorted(batch)})")

    def _first_frames(self, batch: dict) -> torch.Tensor:
        """``(b, 3, h, w)``: the conditioning frames (the first frame of each clip)."""
        return batch["cond_frame"] if self.is_latent_batch(batch) else self._frames(batch)[:, 0]

    def _batch_size(self, batch: dict) -> int:
        return self._first_frames(batch).shape[0]

    def conditioning_inputs(self, batch: dict, frames: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The conditioner's inputs; ``frames``: ``(b, t', 3, h, w)``, only its first frame is read."""
        inputs = dict(batch)
        if self.image_to_video:
            aug = self.cond_aug(frames.shape[0], generator=generator).to(frames.device)
            inputs.update(i2v_inputs(frames[:, 0], batch["fps_id"], batch["motion_bucket_id"], aug, generator))
        return inputs

    def condition(self, inputs: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Run the conditioner; an embedder whose output the batch carries (``cached.<i>``) is not
        run, its cached output takes its place (the ``ucg_rate`` dropout still applies)."""
        cached = {i for i in range(len(self.conditioner.embedders)) if f"{CACHED_PREFIX}{i}" in inputs}
        if not cached:
            return self.conditioner(inputs, dropout=self.training, generator=generator)
        view = Conditioner([  # the same embedders, identities where cached; never registered as a submodule
            EmbedderSpec(nn.Identity(), f"{CACHED_PREFIX}{i}", rate) if i in cached else EmbedderSpec(emb, key, rate)
            for i, (emb, key, rate) in enumerate(zip(self.conditioner.embedders, self.conditioner.input_keys,
                                                     self.conditioner.ucg_rates))])
        return view(inputs, dropout=self.training, generator=generator)

    def _scaled(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale_factor <= 0:
            if not self.scale_by_std:
                raise ValueError("scale_factor must be positive")
            scale = torch.tensor(1.0 / z.float().flatten().std().item(), device=z.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(scale, src=0)  # one scale on every rank: rank 0's first batch
            self.scale_factor.fill_(scale.item())
            log.info("scale_factor set to %.5f (1 / std of the first batch's latents)", self.scale_factor.item())
        return z * self.scale_factor

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._scaled(self.first_stage_model.encode(pixels).sample(generator=generator))

    @torch.no_grad()
    def cached_latents(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(b * t, c, h, w)`` scaled latents of a latent batch: a posterior sample when the cache
        holds ``latents_logvar`` (the draw :meth:`encode` makes), else the stored mode."""
        mean = batch["latents"].flatten(0, 1)
        if "latents_logvar" not in batch:
            return self._scaled(mean)
        return self._scaled(DiagonalGaussian(mean, batch["latents_logvar"].flatten(0, 1)).sample(generator=generator))

    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        latent = self.is_latent_batch(batch)
        frames = self._first_frames(batch)[:, None] if latent else self._frames(batch)
        b = frames.shape[0]
        t = batch["latents"].shape[1] if latent else frames.shape[1]
        cond = expand_to_frames(self.condition(self.conditioning_inputs(batch, frames, generator), generator), t)
        z = self.cached_latents(batch, generator) if latent else self.encode(frames.flatten(0, 1), generator)
        sigma = self.sigma_sampler(b, generator=generator).to(z.device).repeat_interleave(t)
        noise = torch.randn(z.shape, generator=generator).to(z)
        noised = z + noise * sigma.reshape(-1, 1, 1, 1)
        extra = {"num_frames": t}
        if self.network.config.video:
            extra["image_only_indicator"] = torch.zeros(b, t, device=z.device)
        pred = self.denoiser(self.model, noised, sigma, cond, **extra)
        per_sample = ((pred.float() - z.float()) ** 2).mean(dim=(1, 2, 3))
        return (self.loss_weighting(sigma) * per_sample).mean()

    def on_fit_start(self) -> None:
        """Refuse latents cached with other weights than this module's first stage / embedders."""
        expected = getattr(getattr(self.trainer, "datamodule", None), "cache_fingerprint", None)
        if expected:
            from vldm.data.latent_dataset import fingerprint

            if fingerprint(self) != expected:
                raise ValueError("the latent cache was made with another autoencoder or conditioner than this "
                                 "stage's; re-run `python -m vldm.jobs.latent_cache` with this stage's config "
                                 "(or set data.check_fingerprint=false)")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=self._batch_size(batch))
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except under FSDP: there each rank holds a shard of every gradient,
        so the norm is FSDP's ``clip_grad_norm_`` over all shards (Lightning refuses to clip by norm)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.model if self._trainer is not None else None
        if not gradient_clip_val or not isinstance(model, FullyShardedDataParallel):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"under FSDP gradients are clipped by norm only, not {gradient_clip_algorithm!r}")
        model.clip_grad_norm_(gradient_clip_val)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update — before any checkpoint of this step is
        written (callbacks' ``on_train_batch_end`` run earlier than the module's)."""
        super().optimizer_step(*args, **kwargs)
        if self.model_ema is not None:
            self.model_ema.update(self.network)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)
        loss = self.diffusion_loss(batch, generator)
        self.log("val/loss", loss, batch_size=self._batch_size(batch))
        if batch_idx == 0 and self.sample_dir is not None:
            self.write_samples(batch)

    def configure_optimizers(self) -> dict:
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        return configure(optimizer, max_steps, self.lr_schedule, self.warmup_steps)

    # ---------------------------------------------------------------- sampling
    def sampler(self, use_ema: bool = True) -> LatentDiffusionSampler:
        network = self.model_ema.shadow if use_ema and self.model_ema is not None else self.network
        return LatentDiffusionSampler(network, self.denoiser, self.conditioner, self.first_stage_model,
                                      float(self.scale_factor), uncond_text=self.uncond_text)

    @torch.no_grad()
    def generate(self, batch: dict, seed: int = 0) -> torch.Tensor:
        """Samples for a batch: videos from its first frames (i2v) or images from its captions."""
        first = self._first_frames(batch)
        num_frames = batch["latents"].shape[1] if self.is_latent_batch(batch) else self._frames(batch).shape[1]
        sampler = self.sampler()
        if self.image_to_video:
            return sampler.image_to_video(first, num_frames, batch["fps_id"], batch["motion_bucket_id"],
                                          cond_aug=0.02, cfg=self.sampler_cfg, seed=seed)
        images = sampler.text_to_image(list(batch["txt"]), first.shape[-2], first.shape[-1], self.sampler_cfg, seed)
        return images[:, None]

    @torch.no_grad()
    def reference_frames(self, batch: dict) -> torch.Tensor:
        """``(b, t, 3, h, w)`` pixels of the batch's clips; a latent batch's are decoded (posterior mean)."""
        if not self.is_latent_batch(batch):
            return self._frames(batch)
        b, t = batch["latents"].shape[:2]
        pixels = self.first_stage_model.decode(batch["latents"].flatten(0, 1).to(self.device), num_frames=t)
        return pixels.reshape(b, t, *pixels.shape[1:])

    def write_samples(self, batch: dict) -> None:
        from vldm.training.sample_writer import write_sample_grid

        was_training = self.training
        self.eval()
        try:
            videos = self.generate(batch)
        finally:
            self.train(was_training)
        if self._trainer is not None and not self.trainer.is_global_zero:
            return  # every rank samples (under FSDP the shards are gathered collectively); rank 0 writes
        path = Path(self.sample_dir) / f"step_{self.global_step:06d}.mp4"
        write_sample_grid(path, videos, self.reference_frames(batch), fps=self.sample_fps)
        for logger in self.loggers:
            if hasattr(logger, "log_video"):
                logger.log_video("val/samples", [str(path)], step=self.global_step)
        log.info("validation samples written to %s", path)
