"""Streaming weights to the execution device around a module's forward ("sequential offload").

A streamed unit keeps its weights at home on the CPU (pinned, where CUDA is available, so the
host-to-device copies can be ``non_blocking``) and has them copied to the execution device by a
forward pre-hook and dropped again by a forward hook: only the unit that runs occupies device
memory. This is the idea of accelerate's ``cpu_offload`` / diffusers'
``enable_sequential_cpu_offload``, at a coarser grain (a UNet block rather than every Linear), so
that far fewer, larger copies are made.

A unit may be a container that is never called itself (the UNet's ``input_blocks.i`` is a
``ModuleList`` whose layers the UNet calls one by one): then its first child loads the whole unit
and its last child releases it. With home and execution device both the CPU every move is a no-op,
so the same code runs (and is tested) without a GPU.

Also here: :func:`cast_io`, a pair of hooks that cast a module's floating inputs to its weight
dtype and its floating outputs to another (fp16 weights, fp32 pipeline).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class StreamUnit:
    """One streamed module: its home copies and whether they are on the device now."""

    module: nn.Module
    home: dict[str, torch.Tensor]  # "param:<name>" / "buffer:<name>" -> tensor on the home device
    loaded: bool = False
    loads: int = 0

    def tensors(self) -> Iterable[tuple[nn.Module, str, str]]:
        """``(owner module, kind, attribute name)`` for every parameter and buffer of the unit."""
        for prefix, owner in self.module.named_modules():
            for name, p in owner._parameters.items():
                if p is not None:
                    yield owner, "param", _join(prefix, name)
            for name, b in owner._buffers.items():
                if b is not None:
                    yield owner, "buffer", _join(prefix, name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _attr(full: str) -> str:
    return full.rsplit(".", 1)[-1]


@dataclass
class Streamer:
    """Handle of :func:`stream`: the units, their hooks; ``remove()`` takes the hooks off."""

    device: torch.device
    units: list[StreamUnit]
    hooks: list[RemovableHandle] = field(default_factory=list)

    def load(self, unit: StreamUnit) -> None:
        for owner, kind, name in unit.tensors():
            src = unit.home[f"{kind}:{name}"]
            moved = src.to(self.device, non_blocking=src.is_pinned())
            if kind == "param":
                owner._parameters[_attr(name)].data = moved
            else:
                owner._buffers[_attr(name)] = moved
        unit.loaded, unit.loads = True, unit.loads + 1

    def release(self, unit: StreamUnit) -> None:
        for owner, kind, name in unit.tensors():
            src = unit.home[f"{kind}:{name}"]
            if kind == "param":
                owner._parameters[_attr(name)].data = src
            else:
                owner._buffers[_attr(name)] = src
        unit.loaded = False

    def remove(self) -> None:
        """Take the hooks off; the weights stay at home (on the CPU)."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        for unit in self.units:
            if unit.loaded:
                self.release(unit)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for u in self.units for t in u.home.values())


def _entry_exit(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose calls open and close a unit's run (first/last child of a ModuleList)."""
    if isinstance(module, nn.ModuleList):
        if len(module) == 0:
            raise ValueError("cannot stream an empty ModuleList")
        return module[0], module[-1]
    return module, module


def stream(units: Sequence[nn.Module], device: torch.device | str, pin: bool | None = None) -> Streamer:
    """Keep ``units``' weights on the CPU and bring each to ``device`` only for its forward.

    ``pin``: page-lock the CPU copies (default: when CUDA is available and ``device`` is a GPU).
    The units must not share parameters with modules placed elsewhere.
    """
    device = torch.device(device)
    pin = (torch.cuda.is_available() and device.type == "cuda") if pin is None else pin
    streamer = Streamer(device, [])
    for module in units:
        module.to("cpu")
        unit = StreamUnit(module, {})
        for owner, kind, name in unit.tensors():
            t = owner._parameters[_attr(name)] if kind == "param" else owner._buffers[_attr(name)]
            home = t.data.pin_memory() if pin and not t.data.is_pinned() else t.data
            if kind == "param":
                owner._parameters[_attr(name)].data = home
            else:
                owner._buffers[_attr(name)] = home
            unit.home[f"{kind}:{name}"] = home
        streamer.units.append(unit)
        entry, exit_ = _entry_exit(module)

        def pre_hook(_m: nn.Module, _args: tuple, unit: StreamUnit = unit) -> None:
            if not unit.loaded:
                streamer.load(unit)

        def post_hook(_m: nn.Module, _args: tuple, _out: object, unit: StreamUnit = unit) -> None:
            streamer.release(unit)

        streamer.hooks.append(entry.register_forward_pre_hook(pre_hook))
        streamer.hooks.append(exit_.register_forward_hook(post_hook))
    return streamer


def _cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def cast_io(module: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype | None = torch.float32
            ) -> list[RemovableHandle]:
    """Hooks casting ``module``'s floating inputs to ``dtype`` and its floating outputs to ``out_dtype``."""
    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}

    hooks = [module.register_forward_pre_hook(pre, with_kwargs=True)]
    if out_dtype is not None:
        hooks.append(module.register_forward_hook(lambda _m, _a, out: _cast(out, out_dtype)))
    return hooks
