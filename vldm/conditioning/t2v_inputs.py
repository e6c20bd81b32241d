"""The conditioning inputs of the text-to-video base model (SVD paper, stages II-III).

``txt``: the captions; ``fps_id`` = fps - 1 and ``motion_bucket_id`` as in image-to-video (the
micro-conditioning the i2v stage keeps). Shared by training samples and sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def t2v_inputs(captions: Sequence[str], fps_id: torch.Tensor | int, motion_bucket_id: torch.Tensor | int,
               device: torch.device | str = "cpu") -> dict:
    """Scalars broadcast to the captions; tensors must hold one value per caption."""
    b = len(captions)

    def per_sample(v: torch.Tensor | int, name: str) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=torch.float32, device=device)
        if v.ndim == 0:
            return v.expand(b).clone()
        if v.shape != (b,):
            raise ValueError(f"{name}: {tuple(v.shape)} values for {b} captions; give one, or one per caption")
        return v.to(device, torch.float32)

    return {"txt": list(captions), "fps_id": per_sample(fps_id, "fps_id"),
            "motion_bucket_id": per_sample(motion_bucket_id, "motion_bucket_id")}
