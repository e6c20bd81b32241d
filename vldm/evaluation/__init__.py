"""Evaluation of generated videos and of training checkpoints.

Entry point: ``python -m vldm.evaluation checkpoints=runs/demo [mode=t2v] data.shards=...`` (``configs/evaluate.yaml``).

Submodules (import them directly; this package imports nothing heavy):

- :mod:`vldm.evaluation.fidelity` -- per-frame PSNR and SSIM (Wang et al., 2004).
- :mod:`vldm.video.motion` -- optical-flow motion score (Blattmann et al., 2023),
  shared with data curation.
- :mod:`vldm.evaluation.frechet` -- Fréchet distance and mergeable feature statistics (FID / FVD).
- :mod:`vldm.evaluation.feature_nets` -- I3D (FVD, StyleGAN-V protocol) and Inception (FID) TorchScript
  feature networks from local files.
- :mod:`vldm.evaluation.random_features` -- weight-free random-projection video features (FRPD).
- :mod:`vldm.evaluation.clip_metrics` -- CLIP score and CLIP temporal consistency (open_clip).
- :mod:`vldm.evaluation.caption_following` -- toy text-to-video: the shape's colour and direction vs the prompt.
- :mod:`vldm.evaluation.temporal` -- conditioning fidelity, motion vs the reference, flicker,
  flow-warping error.
- :mod:`vldm.evaluation.protocol` -- what a number was measured on; too-few-videos warnings.
- :mod:`vldm.evaluation.checkpoints` -- which checkpoints to evaluate for a mode (t2v / i2v); loading them
  (image stage inflated).
- :mod:`vldm.evaluation.mode_metrics` -- which metrics a mode computes (frame-0 fidelity, caption following).
- :mod:`vldm.evaluation.reference` -- reference clips and their cached feature statistics.
- :mod:`vldm.evaluation.generate` -- evaluation videos with fixed per-video seeds.
- :mod:`vldm.evaluation.ranks` -- torch.distributed sharding, gathering and reduction.
- :mod:`vldm.evaluation.outputs` -- ``metrics.json``, ``metrics.csv``, plots, wandb.
- :mod:`vldm.evaluation.run` -- the evaluation run tying these together.
- :mod:`vldm.jobs.toy_check` -- a quick "does the toy run learn?" check.
"""
