"""LoRA adapters on a vldm UNet through peft (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

Targets are named groups of the network's module names or a regular expression over them:
``temporal_attention`` (the temporal transformer's attention projections, ``time_stack.<i>.attn{1,2}.to_{q,k,v,out.0}``:
where the SVD paper trains its camera-motion LoRAs), ``temporal`` (every linear and convolution layer of the temporal
parts: ``time_stack`` resblocks and transformers, ``time_pos_embed``), ``attention`` (spatial and temporal attention
projections) and ``all_linear`` (every ``nn.Linear``). peft injects the layers; an injected module keeps its weights
as ``<name>.base_layer.*`` and holds the adapter as ``<name>.lora_A.<adapter>.weight`` / ``lora_B``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

TARGET_GROUPS = ("temporal_attention", "temporal", "attention", "all_linear")
ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)
ATTENTION_PROJECTION = re.compile(r"(.+\.)?attn[12]\.(to_q|to_k|to_v|to_out\.0)")
TEMPORAL_PART = re.compile(r"(.+\.)?(time_stack|time_pos_embed)(\..+)?")
ADAPTER_MARK = ".lora_"


@dataclass(frozen=True)
class LoraSpec:
    """What a LoRA adapts and how: ``rank`` r, ``alpha`` (the update is scaled by alpha / r), ``dropout`` on its
    input, ``targets`` (group names of :data:`TARGET_GROUPS` or regular expressions over module names)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=("temporal_attention",))

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"lora alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"lora targets must be one or more of {TARGET_GROUPS} or regular expressions over "
                             f"module names, got {self.targets!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": float(self.alpha), "dropout": float(self.dropout),
                "targets": list(self.targets)}

    @classmethod
    def from_config(cls, node: Any) -> "LoraSpec":
        """A spec from ``stage.adapter``: the string ``lora`` (the defaults) or a mapping with ``kind: lora``."""
        if node == "lora":
            return cls()
        if not isinstance(node, Mapping):
            raise ValueError(f"stage.adapter must be 'lora' or a mapping {{kind: lora, rank, alpha, dropout, targets}}, "
                             f"got {node!r}")
        items = dict(node)
        kind = items.pop("kind", "lora")
        if kind != "lora":
            raise ValueError(f"stage.adapter.kind must be 'lora' (the only adapter vldm trains), got {kind!r}")
        unknown = sorted(set(items) - {"rank", "alpha", "dropout", "targets"})
        if unknown:
            raise ValueError(f"stage.adapter has unknown keys {unknown}; it takes kind, rank, alpha, dropout, targets")
        targets = items.pop("targets", cls.targets)
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        return cls(targets=targets, **items)


def adaptable_modules(network: nn.Module) -> dict[str, nn.Module]:
    """The modules a LoRA can adapt (linear and convolution layers) by name; where peft has adapted one already,
    its base layer under the layer's name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in network.named_modules():
        if ADAPTER_MARK in name or name.endswith(".base_layer"):
            continue
        if isinstance(m, LoraLayer):
            out[name] = m.get_base_layer()
        elif isinstance(m, ADAPTABLE):
            out[name] = m
    return out


def _group(name: str, module: nn.Module, group: str) -> bool:
    if group == "temporal_attention":
        return bool(ATTENTION_PROJECTION.fullmatch(name)) and ".time_stack." in f".{name}"
    if group == "temporal":
        return bool(TEMPORAL_PART.fullmatch(name))
    if group == "attention":
        return bool(ATTENTION_PROJECTION.fullmatch(name))
    return isinstance(module, nn.Linear)  # all_linear


def target_names(network: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names of the modules ``targets`` selects (groups or regular expressions); none is an error."""
    modules = adaptable_modules(network)
    chosen: set[str] = set()
    for target in targets:
        if target in TARGET_GROUPS:
            found = {n for n, m in modules.items() if _group(n, m, target)}
        else:
            try:
                pattern = re.compile(target)
            except re.error as err:
                raise ValueError(f"lora target {target!r} is neither a group {TARGET_GROUPS} nor a valid regular "
                                 f"expression ({err})") from err
            found = {n for n in modules if pattern.fullmatch(n)}
        if not found:
            example = next(iter(modules), "")
            raise ValueError(f"lora target {target!r} selects no linear or convolution layer of this network "
                             f"(groups: {TARGET_GROUPS}; a regular expression must match whole module names, "
                             f"e.g. {example!r})")
        chosen |= found
    return sorted(chosen)


def inject_lora(network: nn.Module, spec: LoraSpec, adapter_name: str = "default",
                ranks: Mapping[str, int] | None = None, alphas: Mapping[str, float] | None = None,
                names: Iterable[str] | None = None) -> list[str]:
    """Inject a LoRA into ``network`` in place (peft); returns the adapted module names.

    ``names``: the modules to adapt (default: those ``spec.targets`` selects); ``ranks`` / ``alphas``: per-module
    values where they differ from the spec's (a file made elsewhere). Adapter weights are float32 whatever the base's
    dtype; ``lora_B`` starts at zero, so the adapted network computes what the base does.
    """
    from peft import LoraConfig
    from peft.functional import cast_adapter_dtype, inject_adapter_in_model

    chosen = sorted(names) if names is not None else target_names(network, spec.targets)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=chosen,
                        rank_pattern={re.escape(n): r for n, r in (ranks or {}).items()},
                        alpha_pattern={re.escape(n): a for n, a in (alphas or {}).items()})
    inject_adapter_in_model(config, network, adapter_name=adapter_name)
    cast_adapter_dtype(network, adapter_name)
    return chosen


def lora_layers(network: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA layers of ``network`` by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in network.named_modules() if isinstance(m, LoraLayer)}


def adapter_names(network: nn.Module) -> list[str]:
    """The adapters injected into ``network``."""
    found: set[str] = set()
    for layer in lora_layers(network).values():
        found |= set(layer.lora_A.keys())
    return sorted(found)


def adapter_parameters(network: nn.Module, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """The adapter parameters (all adapters', or ``adapter_name``'s) by their name in ``network``."""
    out = {}
    for name, p in network.named_parameters():
        if ADAPTER_MARK in name and (adapter_name is None or f".{adapter_name}." in name):
            out[name] = p
    return out


def freeze_base(network: nn.Module) -> None:
    """Only the adapter parameters train."""
    network.requires_grad_(False)
    for p in adapter_parameters(network).values():
        p.requires_grad_(True)


def activate(network: nn.Module, scales: Mapping[str, float]) -> None:
    """Make exactly the adapters of ``scales`` active, each with its update scaled by ``scale * alpha / r``."""
    from peft.functional import set_adapter

    for scale in scales.values():
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"a LoRA scale must be a number, got {scale!r}")
    present = set(adapter_names(network))
    missing = sorted(set(scales) - present)
    if missing:
        raise KeyError(f"adapters {missing} are not in this network (it has {sorted(present)})")
    requires_grad = {n: p.requires_grad for n, p in network.named_parameters()}
    set_adapter(network, list(scales))
    for name, p in network.named_parameters():  # set_adapter marks active adapters trainable: keep what was
        p.requires_grad_(requires_grad[name])
    for layer in lora_layers(network).values():
        for adapter, scale in scales.items():
            layer.set_scale(adapter, float(scale))


def merge_and_unload(network: nn.Module) -> list[str]:
    """Add every active adapter's scaled update to its base weight, then put the base layers back: the
    network has its plain keys again. Returns the merged module names."""
    layers = lora_layers(network)
    for name, layer in layers.items():
        layer.merge(adapter_names=[a for a in layer.active_adapters if a in layer.lora_A])
    unload(network)
    return sorted(layers)


def unload(network: nn.Module) -> None:
    """Replace each LoRA layer by its base layer (a merged update stays in the weights)."""
    for name, layer in lora_layers(network).items():
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, layer.get_base_layer())


def base_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """``network``'s state dict without the adapters, under the base's own keys (``.base_layer`` removed)."""
    return {k.replace(".base_layer.", "."): v for k, v in network.state_dict().items() if ADAPTER_MARK not in k}
