"""LoRA files in the key format ComfyUI's LoRA loader reads for LDM / SGM UNets (``comfy/lora.py``,
``model_lora_keys_unet``), with vldm's metadata.

A module of the UNet named ``input_blocks.1.1.time_stack.0.attn1.to_q`` (SGM key
``model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight``) is stored as
``lora_unet_input_blocks_1_1_time_stack_0_attn1_to_q.lora_down.weight`` (peft's ``lora_A``, ``(r, in, *kernel)``),
``.lora_up.weight`` (``lora_B``, ``(out, r, 1, ...)``) and ``.alpha`` (a scalar): the update is
``scale * alpha / r * up @ down``. The name with dots turned into underscores is read back through the base's
own module names, so it is never guessed. Metadata: the adapter's spec and the base model it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vldm.adapters.lora import LoraSpec, adaptable_modules, inject_lora, lora_layers
from vldm.io.safe_load import CONTENT_HASH, CheckpointError, safetensors_metadata, save_safetensors

LORA_PREFIX = "lora_unet_"
UNET_PREFIX = "model.diffusion_model."
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
FORMAT = "vldm_lora"  # metadata key: the file's kind and key format


def lora_key(module_name: str) -> str:
    """The file key stem of a UNet module (ComfyUI's rule: SGM key without the prefix and ``.weight``, ``.`` -> ``_``)."""
    return LORA_PREFIX + module_name.replace(".", "_")


def base_identity(path: str | Path) -> dict[str, str]:
    """What names a base weights file: its path, its recorded content hash (``vldm_sha256``) where it has one, its size."""
    path = Path(path)
    recorded = ""
    if path.suffix == ".safetensors" and path.is_file():
        recorded = safetensors_metadata(path)[0].get(CONTENT_HASH, "")
    return {"base": str(path.resolve()), "base_sha256": recorded,
            "base_bytes": str(path.stat().st_size) if path.is_file() else ""}


def lora_state(network: nn.Module, adapter_name: str = "default",
               values: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter ``adapter_name`` of ``network`` as file tensors (float32); ``values``: other values for its
    parameters by their name in ``network`` (the EMA's)."""
    state = {}
    for name, layer in sorted(lora_layers(network).items()):
        if adapter_name not in layer.lora_A:
            continue
        down = f"{name}.lora_A.{adapter_name}.weight"
        up = f"{name}.lora_B.{adapter_name}.weight"
        values_of = values or {}
        key = lora_key(name)
        state[key + DOWN] = values_of.get(down, layer.lora_A[adapter_name].weight).detach().float().contiguous()
        state[key + UP] = values_of.get(up, layer.lora_B[adapter_name].weight).detach().float().contiguous()
        state[key + ALPHA] = torch.tensor(float(layer.lora_alpha[adapter_name]))
    if not state:
        raise ValueError(f"the network has no LoRA adapter named {adapter_name!r}")
    return state


def save_lora(path: str | Path, network: nn.Module, spec: LoraSpec, base: Mapping[str, str],
              adapter_name: str = "default", values: Mapping[str, torch.Tensor] | None = None,
              extra: Mapping[str, str] | None = None) -> Path:
    """Write the adapter as a ComfyUI-format safetensors file with the spec and ``base`` (:func:`base_identity`)."""
    state = lora_state(network, adapter_name, values)
    metadata = {FORMAT: "comfyui_unet", "vldm_lora_spec": json.dumps(spec.as_dict()),
                "ss_network_dim": str(spec.rank), "ss_network_alpha": str(float(spec.alpha)),
                **{f"vldm_{k}": v for k, v in base.items()}, **(extra or {})}
    return save_safetensors(state, path, metadata)


@dataclass
class LoraFile:
    """A LoRA file read back: per UNet module name its ``down``, ``up`` and ``alpha``, and the file's metadata."""

    path: Path
    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    alpha: dict[str, float]
    metadata: dict[str, str]

    @property
    def ranks(self) -> dict[str, int]:
        return {name: int(t.shape[0]) for name, t in self.down.items()}


def read_lora(path: str | Path, network: nn.Module) -> LoraFile:
    """Read a LoRA file for ``network`` (the base UNet): every key must name one of its layers with the shapes
    the layer implies; anything else is a :class:`CheckpointError` naming the first mismatching keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        metadata, _ = safetensors_metadata(path)
        from vldm.io.safe_load import verify_content_hash

        verify_content_hash(path)
        tensors = load_file(str(path))
    except (CheckpointError, SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a safetensors LoRA file ({err}); LoRA files are .safetensors with "
                              f"keys {LORA_PREFIX}<module>{DOWN} / {UP} / {ALPHA}") from err
    stems = {lora_key(name): name for name in adaptable_modules(network)}
    modules = adaptable_modules(network)
    down, up, alpha, problems = {}, {}, {}, []
    for key, value in sorted(tensors.items()):
        stem, kind = _split(key)
        name = stems.get(stem) if kind else None
        if name is None:
            problems.append(f"{key} (no layer of this UNet has that name)" if kind else
                            f"{key} (not a {LORA_PREFIX}*{DOWN} / {UP} / {ALPHA} key)")
            continue
        {"down": down, "up": up}.get(kind, {})[name] = value
        if kind == "alpha":
            alpha[name] = float(value.item())
    for name in sorted(set(down) | set(up)):
        if name not in down or name not in up:
            problems.append(f"{lora_key(name)} (has only one of lora_down / lora_up)")
            continue
        problems.extend(_shape_problems(name, modules[name], down[name], up[name]))
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
        raise CheckpointError(f"{path} does not fit this base model ({shown}); {_made_for(metadata)}")
    if not down:
        raise CheckpointError(f"{path} holds no LoRA weights ({LORA_PREFIX}*{DOWN} keys)")
    for name in down:  # a file without alpha means alpha = rank (scale 1), as ComfyUI reads it
        alpha.setdefault(name, float(down[name].shape[0]))
    return LoraFile(path, down, up, alpha, metadata)


def _made_for(metadata: Mapping[str, str]) -> str:
    base = metadata.get("vldm_base")
    return f"it was made for {base}" if base else "its metadata names no base model"


def _split(key: str) -> tuple[str, str]:
    for suffix, kind in ((DOWN, "down"), (UP, "up"), (ALPHA, "alpha")):
        if key.startswith(LORA_PREFIX) and key.endswith(suffix):
            return key[: -len(suffix)], kind
    return key, ""


def _shape_problems(name: str, module: nn.Module, down: torch.Tensor, up: torch.Tensor) -> list[str]:
    weight = module.weight
    out_features, in_features, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    rank = down.shape[0]
    want_down, want_up = (rank, in_features, *kernel), (out_features, rank, *(1,) * len(kernel))
    problems = []
    if tuple(down.shape) != want_down:
        problems.append(f"{lora_key(name)}{DOWN} has shape {tuple(down.shape)}, this UNet's "
                        f"{UNET_PREFIX}{name}.weight {tuple(weight.shape)} needs {want_down}")
    if tuple(up.shape) != want_up:
        problems.append(f"{lora_key(name)}{UP} has shape {tuple(up.shape)}, this UNet's "
                        f"{UNET_PREFIX}{name}.weight {tuple(weight.shape)} needs {want_up}")
    return problems


def apply_lora(network: nn.Module, lora: LoraFile, adapter_name: str) -> list[str]:
    """Inject ``lora`` into ``network`` as adapter ``adapter_name`` (peft) with its weights; returns the module names."""
    ranks = lora.ranks
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    names = inject_lora(network, LoraSpec(rank=rank, alpha=float(rank)), adapter_name, ranks=ranks,
                        alphas=lora.alpha, names=list(lora.down))
    layers = lora_layers(network)
    with torch.no_grad():
        for name in names:
            layer = layers[name]
            layer.lora_A[adapter_name].weight.copy_(lora.down[name])
            layer.lora_B[adapter_name].weight.copy_(lora.up[name])
    return names
