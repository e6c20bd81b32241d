"""Video dataset curation (cut detection, motion, text and CLIP scores, filtering into shards).

``python -m data_curation input=DIR output=DIR`` runs :func:`data_curation.pipeline.curate` (see
docs/curation.md); the motion scorer uses the optical-flow score of :mod:`vldm.video.motion`.
"""
