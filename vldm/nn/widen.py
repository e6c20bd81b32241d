"""Text-to-video -> image-to-video: the same video UNet with a wider input conv and vector embedding.

Blattmann et al., 2023, Sec. 4: the image-to-video model is fine-tuned from the text-to-video base
model. The conditioning-frame latent is concatenated to the noisy latent, so ``input_blocks.0.0``
gains input channels; the vector conditioning gains ``cond_aug`` after ``fps_id`` and
``motion_bucket_id``, so the first ``label_emb`` linear gains input features. Both new parts start at
zero: with the same cross-attention context the widened network computes what the base model computes.
"""

from __future__ import annotations

import torch

from vldm.nn.unet import UNet

INPUT_CONV = "input_blocks.0.0.weight"
VECTOR_IN = "label_emb.0.0.weight"
WIDENED = {INPUT_CONV: 1, VECTOR_IN: 1}  # key -> the dimension that grows


@torch.no_grad()
def load_widened(unet: UNet, state: dict[str, torch.Tensor]) -> None:
    """Fill ``unet`` from a narrower UNet's state dict: every key must match by name; every shape
    must match except the widened dimension of :data:`WIDENED`, whose new part is zero."""
    target = unet.state_dict()
    unexpected, missing = sorted(set(state) - set(target)), sorted(set(target) - set(state))
    if unexpected or missing:
        raise KeyError(f"the weights do not fit this UNet: missing {missing[:12]}, unexpected {unexpected[:12]}")
    for name, value in state.items():
        dst = target[name]
        dim = WIDENED.get(name)
        if value.shape == dst.shape:
            dst.copy_(value)
        elif dim is not None and value.ndim == dst.ndim and value.shape[dim] < dst.shape[dim] and all(
                a == b for i, (a, b) in enumerate(zip(value.shape, dst.shape)) if i != dim):
            dst.zero_()
            dst.narrow(dim, 0, value.shape[dim]).copy_(value)
        else:
            raise KeyError(f"shape mismatch for {name}: file {tuple(value.shape)} vs this UNet {tuple(dst.shape)}"
                           + (f" (only dimension {dim} may grow)" if dim is not None else ""))
