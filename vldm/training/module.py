"""One LightningModule for the diffusion stages of the SVD recipe, around a plain model.

A stage is configuration: which model (:class:`~vldm.models.LatentDiffusion`: image UNet or the
video UNet after :func:`inflate`; text-to-image, text-to-video or image-to-video), which data, which
parameters train. This module adds what training needs: the loss, the EMA copy, the optimizer.

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

from vldm.checkpoints.export import EMA_PREFIX, MODEL_PREFIX
from vldm.conditioning.conditioner import Conditioner, EmbedderSpec
from vldm.conditioning.i2v_inputs import LogNormalCondAug, expand_to_frames, i2v_inputs
from vldm.data.latent_dataset import CACHED_PREFIX, fingerprint
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.nn.autoencoder import DiagonalGaussian
from vldm.nn.inflate import temporal_parameter_names
from vldm.nn.unet import UNet
from vldm.sampling.pipeline import LatentDiffusionSampler
from vldm.training.adapter_checkpoint import check_adapter_checkpoint, checkpoint_state
from vldm.training.ema import EMA, AdapterEMA
from vldm.training.optim import configure

log = logging.getLogger(__name__)



def module_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unprefixed model keys as :class:`DiffusionModule` names them (the model under ``diffusion.``)."""
    return {k if k.startswith(EMA_PREFIX) else MODEL_PREFIX + k: v for k, v in state_dict.items()}


class DiffusionModule(pl.LightningModule):
    """Trains a :class:`~vldm.models.LatentDiffusion` (held as ``diffusion``): loss, EMA, optimisation.

    Lightning checkpoints hold the model under ``diffusion.*`` and the EMA copy as ``model_ema.*``;
    :func:`vldm.checkpoints.export.export_state_dict` turns them into the model's own layout.
    """

    def __init__(self, model: LatentDiffusion, sigma_sampler: Any, loss_weighting: Any, lr: float = 1e-4,
                 weight_decay: float = 0.0, ema_decay: float | None = 0.999, trainable: str = "all",
                 cond_aug: LogNormalCondAug | None = None, sample_dir: str | None = None, sample_fps: int = 8,
                 lr_schedule: str = "constant", warmup_steps: int = 0) -> None:
        super().__init__()
        self.diffusion = model
        self.sigma_sampler, self.loss_weighting = sigma_sampler, loss_weighting
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps
        self.cond_aug = cond_aug or LogNormalCondAug()
        self.sample_dir, self.sample_fps = sample_dir, sample_fps
        self.set_trainable(trainable)
        self.model_ema: EMA | AdapterEMA | None = EMA(self.network, ema_decay) if ema_decay else None
        self.adapter: dict | None = None  # a LoRA stage's record: spec and base (vldm.training.adapter_stage)

    @property
    def network(self) -> UNet:
        return self.diffusion.network

    @property
    def first_stage_model(self) -> nn.Module:
        return self.diffusion.first_stage_model

    @property
    def conditioner(self) -> Conditioner:
        return self.diffusion.conditioner

    @property
    def image_to_video(self) -> bool:
        return self.diffusion.image_to_video

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written while the model's parts were this module's own holds their keys unprefixed."""
        state = checkpoint.get("state_dict")  # FSDP's strategy has loaded it and taken it out already
        if state is not None and not any(k.startswith(MODEL_PREFIX) for k in state):
            checkpoint["state_dict"] = module_keys(state)
        if self.adapter is not None:
            check_adapter_checkpoint(self, checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA stage's checkpoint holds only the adapter (and its EMA), not the frozen base."""
        if self.adapter is not None:
            checkpoint_state(self, checkpoint)

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
        """``z`` in the model's latent space; a ``scale_by_std`` model measures its scale on the first batch
        (LDM: 1 / std of the latents, rank 0's on every rank)."""
        scale_factor = self.diffusion.scale_factor
        if self.diffusion.scale_by_std and not scale_factor > 0:
            scale = torch.tensor(1.0 / z.float().flatten().std().item(), device=z.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(scale, src=0)
            scale_factor.fill_(scale.item())
            log.info("scale_factor set to %.5f (1 / std of the first batch's latents)", scale_factor.item())
        return self.diffusion.scaled(z)

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
        pred = self.diffusion.denoiser(self.diffusion.model, noised, sigma, cond, **extra)
        per_sample = ((pred.float() - z.float()) ** 2).mean(dim=(1, 2, 3))
        return (self.loss_weighting(sigma) * per_sample).mean()

    def on_fit_start(self) -> None:
        """Refuse latents cached with other weights than this module's first stage / embedders."""
        expected = getattr(getattr(self.trainer, "datamodule", None), "cache_fingerprint", None)
        if expected and fingerprint(self.diffusion) != expected:
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
        """The sampler of the EMA network (an adapter's EMA: call inside :meth:`AdapterEMA.applied`) or the live one."""
        use_shadow = use_ema and isinstance(self.model_ema, EMA)
        return LatentDiffusionSampler.from_model(self.diffusion, self.model_ema.shadow if use_shadow else self.network)

    @torch.no_grad()
    def generate(self, batch: dict, seed: int = 0) -> torch.Tensor:
        """Samples for a batch: videos from its first frames (i2v) or its captions (t2v), or images from its captions."""
        if isinstance(self.model_ema, AdapterEMA):
            with self.model_ema.applied(self.network):
                return self._generate(batch, seed)
        return self._generate(batch, seed)

    def _generate(self, batch: dict, seed: int) -> torch.Tensor:
        first = self._first_frames(batch)
        num_frames = batch["latents"].shape[1] if self.is_latent_batch(batch) else self._frames(batch).shape[1]
        sampler = self.sampler()
        if self.image_to_video:
            return sampler.image_to_video(first, num_frames, batch["fps_id"], batch["motion_bucket_id"],
                                          cond_aug=0.02, cfg=self.diffusion.sampler_cfg, seed=seed)
        if self.diffusion.task == "text_to_video":
            return sampler.text_to_video(list(batch["txt"]), num_frames, first.shape[-2], first.shape[-1],
                                         batch["fps_id"], batch["motion_bucket_id"], self.diffusion.sampler_cfg, seed)
        images = sampler.text_to_image(list(batch["txt"]), first.shape[-2], first.shape[-1], self.diffusion.sampler_cfg, seed)
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
