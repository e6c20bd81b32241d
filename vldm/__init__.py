"""vldm: video latent diffusion training following the Stable Video Diffusion recipe."""

__version__ = "0.1.0"
