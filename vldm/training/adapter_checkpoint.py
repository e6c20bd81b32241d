"""What a LoRA stage's Lightning checkpoints hold: only what trains (the adapter, its EMA) and the adapter's record
(its spec and the base's identity), checked on resume (:mod:`vldm.training.adapter_stage`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vldm.io.safe_load import CheckpointError

CHECKPOINT_KEY = "adapter"  # a Lightning checkpoint's record of the adapter spec and its base


def checkpoint_state(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Keep in a Lightning checkpoint only what trains (the adapter, its EMA) and the adapter's record."""
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v for k, v in state.items() if ".lora_" in k or k.startswith("model_ema.")}
    checkpoint[CHECKPOINT_KEY] = dict(module.adapter)


def check_adapter_checkpoint(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """A resumed adapter checkpoint must be this adapter on this base, with exactly its keys."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        raise CheckpointError("this checkpoint holds a whole model, not a LoRA adapter; an adapter stage resumes only "
                              "from its own checkpoints (resume=never starts afresh)")
    for field in ("spec", "base", "base_sha256", "base_bytes"):
        if saved.get(field) != module.adapter.get(field):
            raise CheckpointError(f"the checkpoint's adapter was trained with {field}={saved.get(field)!r}, this stage "
                                  f"has {module.adapter.get(field)!r}: resume with the base and spec it was trained on")
    own = {k for k in module.state_dict() if ".lora_" in k or k.startswith("model_ema.")}
    found = set(checkpoint.get("state_dict", {}))
    if own != found:
        missing, unexpected = sorted(own - found), sorted(found - own)
        raise CheckpointError(f"the adapter checkpoint does not fit this adapter: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
