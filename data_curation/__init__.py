"""Video dataset curation (cut detection, motion, text and CLIP scores, filtering into shards).

The scorers and the pipeline arrive with issue #4; the shared motion score already lives in
:mod:`vldm.video.motion`.
"""
