"""Embedders without learned parameters: sinusoids of scalars and the conditioning-frame latent."""

from __future__ import annotations

import torch
from torch import nn

from vldm.nn.resblock import timestep_embedding


class ConcatTimestepEmbedderND(nn.Module):
    """Each scalar of ``(b,)`` or ``(b, d)`` -> a ``outdim`` sinusoid (cos first); concatenated.

    SVD feeds ``fps_id``, ``motion_bucket_id`` and ``cond_aug`` this way (256 each -> 768).
    """

    def __init__(self, outdim: int = 256) -> None:
        super().__init__()
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = x[:, None] if x.ndim == 1 else x
        emb = timestep_embedding(x.reshape(-1), self.outdim)
        return emb.reshape(x.shape[0], -1)


class ConditioningFrameEncoder(nn.Module):
    """Encodes the (noise-augmented) conditioning frame with the autoencoder; posterior mode,
    NOT multiplied by the latent scale factor (as in SVD). Output ``(b, z, h, w)`` -> concat.

    ``encoder=None``: the diffusion module hands in its own first-stage autoencoder (shared)."""

    def __init__(self, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder

    def train(self, mode: bool = True) -> "ConditioningFrameEncoder":
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(image).mode()
