"""Several LoRA files on one base UNet, each with a scale, unmerged (peft layers) or merged into the weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from vldm.adapters.lora import activate, merge_and_unload
from vldm.adapters.lora_file import apply_lora, read_lora


def parse_lora_arg(arg: str) -> tuple[Path, float]:
    """``PATH:SCALE`` (or ``PATH``, scale 1) -> the file and its scale; a scale that is not a number is an error."""
    if not isinstance(arg, str) or not arg:
        raise ValueError(f"a LoRA is given as PATH or PATH:SCALE (e.g. camera_pan_left.safetensors:0.8), got {arg!r}")
    path, sep, scale = arg.rpartition(":")
    if not sep or not path or "/" in scale or scale.endswith(".safetensors"):
        return Path(arg), 1.0
    try:
        value = float(scale)
    except ValueError as err:
        raise ValueError(f"LoRA {arg!r}: the scale after ':' must be a number (e.g. {path}:0.8), got {scale!r}") from err
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"LoRA {arg!r}: the scale must be a finite number, got {scale!r}")
    return Path(path), value


def apply_loras(network: nn.Module, loras: Sequence[tuple[str | Path, float]], merge: bool = False) -> list[str]:
    """Inject every LoRA file (adapters ``lora0``, ``lora1``, ...) into ``network`` with its scale, all active
    together; ``merge``: add the scaled updates to the base weights and remove the peft layers. Returns the adapter
    names (empty after a merge: nothing is left to switch)."""
    scales = {}
    for i, (path, scale) in enumerate(loras):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"LoRA {path}: the scale must be a number, got {scale!r}")
        name = f"lora{i}"
        apply_lora(network, read_lora(path, network), name)
        scales[name] = float(scale)
    if not scales:
        return []
    activate(network, scales)
    if merge:
        merge_and_unload(network)
        return []
    return list(scales)
