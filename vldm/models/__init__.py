"""Models as plain ``nn.Module`` s, in the SGM key layout: what sampling, evaluation and export load."""

from vldm.models.latent_diffusion import DiffusionWrapper, LatentDiffusion

__all__ = ["DiffusionWrapper", "LatentDiffusion"]
