"""Exponential moving average of network weights (as in LDM / SGM ``LitEma``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


def warmed_up_decay(decay: float, num_updates: int) -> float:
    """The decay of update ``num_updates`` (1-based): ``min(decay, (1 + n) / (10 + n))``, as in LDM's ``LitEma``."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA(nn.Module):
    """Keeps ``shadow``, a frozen copy of a network, and moves it towards the live weights.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` over ``n`` updates. Being a
    module, it travels in the LightningModule's state dict, so checkpoints and resume keep it.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(network).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    def train(self, mode: bool = True) -> "EMA":
        return super().train(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.num_updates += 1
        decay = warmed_up_decay(self.decay, int(self.num_updates))
        live = dict(network.named_parameters())
        for name, shadow in self.shadow.named_parameters():
            shadow.lerp_(live[name].detach().to(shadow.dtype), 1.0 - decay)
        live_buffers = dict(network.named_buffers())
        for name, buf in self.shadow.named_buffers():
            buf.copy_(live_buffers[name])

    @torch.no_grad()
    def sync(self, network: nn.Module) -> None:
        """Restart the average at ``network``'s current weights (after loading a checkpoint)."""
        self.shadow.load_state_dict(network.state_dict())
        self.num_updates.zero_()


class AdapterEMA(nn.Module):
    """The same average over only some parameters of a network (an adapter's), held as buffers.

    For a LoRA on a frozen base the base never moves, so only the adapter's weights are averaged;
    ``values()`` gives them by their name in the network (what the adapter file is written from).
    """

    def __init__(self, network: nn.Module, names: list[str], decay: float = 0.999) -> None:
        super().__init__()
        self.decay, self.names = decay, list(names)
        params = dict(network.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"the network has no parameters {missing[:4]}")
        for name in self.names:
            self.register_buffer(self._key(name), params[name].detach().clone())
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def values(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, self._key(name)) for name in self.names}

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.num_updates += 1
        decay = warmed_up_decay(self.decay, int(self.num_updates))
        live = dict(network.named_parameters())
        for name, shadow in self.values().items():
            shadow.lerp_(live[name].detach().to(shadow.dtype), 1.0 - decay)

    @torch.no_grad()
    def sync(self, network: nn.Module) -> None:
        live = dict(network.named_parameters())
        for name, shadow in self.values().items():
            shadow.copy_(live[name])
        self.num_updates.zero_()

    @contextlib.contextmanager
    def applied(self, network: nn.Module) -> Iterator[nn.Module]:
        """``network`` with the averaged values in place of its live ones, restored afterwards."""
        live = dict(network.named_parameters())
        kept = {name: live[name].detach().clone() for name in self.names}
        with torch.no_grad():
            for name, shadow in self.values().items():
                live[name].copy_(shadow)
        try:
            yield network
        finally:
            with torch.no_grad():
                for name, value in kept.items():
                    live[name].copy_(value)
