"""Evaluation metrics for generated videos.

Submodules (import them directly; this package imports nothing heavy):

- :mod:`vldm.evaluation.fidelity` -- per-frame PSNR and SSIM (Wang et al., 2004).
- :mod:`vldm.evaluation.motion` -- optical-flow motion score (Blattmann et al., 2023),
  shared with data curation.
"""
