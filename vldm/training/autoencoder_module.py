"""Lightning module that trains a (tiny) KL autoencoder as a stand-in first stage.

The objective is the pixel part of SGM's ``GeneralLPIPSWithDiscriminator`` without LPIPS or the
GAN: L1 + MSE reconstruction plus a small KL weight (``kl_weight``, 1e-6 in the SD configs).
The network lives at ``self.first_stage_model`` so checkpoint keys read ``first_stage_model.*``,
the layout of the released SD checkpoints and of the diffusion module.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from vldm.nn.autoencoder import AutoencoderKL
from vldm.training.optim import configure


class AutoencoderModule(pl.LightningModule):
    """Reconstruction + KL training of an ``AutoencoderKL`` on batches ``{"jpg": (B, 3, H, W) in [-1, 1]}``."""

    def __init__(self, autoencoder: AutoencoderKL, lr: float = 4.5e-4, kl_weight: float = 1e-6,
                 weight_decay: float = 0.0, lr_schedule: str = "constant", warmup_steps: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["autoencoder"])
        self.first_stage_model = autoencoder
        self.lr = lr
        self.kl_weight = kl_weight
        self.weight_decay = weight_decay
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps

    def compute_loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for one batch: ``loss`` = ``rec`` (L1 + MSE, means) + kl_weight * ``kl`` (batch mean)."""
        recon, posterior = self.first_stage_model(x, sample=True)
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        return {"loss": rec + self.kl_weight * kl, "rec": rec, "kl": kl}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["jpg"]
        terms = self.compute_loss(x)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.global_step}")
        n = x.shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=n)
        self.log("train/rec", terms["rec"], batch_size=n)
        self.log("train/kl", terms["kl"], batch_size=n)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["jpg"]
        recon, _ = self.first_stage_model(x, sample=False)
        psnr = psnr_db(recon, x)
        self.log("val/psnr", psnr, batch_size=x.shape[0])
        return psnr

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.first_stage_model.parameters(), lr=self.lr, betas=(0.5, 0.9),
                                      weight_decay=self.weight_decay)
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        return configure(optimizer, max_steps, self.lr_schedule, self.warmup_steps)


def psnr_db(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB of [-1, 1] images after mapping (and clamping) to [0, 1]."""
    a = ((recon.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    b = ((target.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (-10.0 * torch.log10(mse)).mean()
