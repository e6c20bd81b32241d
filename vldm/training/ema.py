"""Exponential moving average of network weights (as in LDM / SGM ``LitEma``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
        n = float(self.num_updates)
        decay = min(self.decay, (1 + n) / (10 + n))
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
