"""Runs the embedders of a model and sorts their outputs into conditioning slots.

Mirrors ``sgm.modules.encoders.modules.GeneralConditioner``: an output with 2 dims goes to
``vector`` (concatenated on features), 3 dims to ``crossattn`` (concatenated on features),
4 dims to ``concat`` (concatenated on channels). ``ucg_rate`` drops an embedder's output to
zero per sample during training, for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

SLOT_BY_NDIM = {2: "vector", 3: "crossattn", 4: "concat"}
CAT_DIM = {"vector": 1, "crossattn": 2, "concat": 1}


@dataclass
class EmbedderSpec:
    """How the conditioner uses one embedder."""

    embedder: nn.Module
    input_key: str
    ucg_rate: float = 0.0


class Conditioner(nn.Module):
    """``embedders.{i}`` in the order given; ``forward(batch) -> {slot: tensor}``."""

    def __init__(self, embedders: Sequence[EmbedderSpec | dict]) -> None:
        super().__init__()
        specs = [e if isinstance(e, EmbedderSpec) else EmbedderSpec(**e) for e in embedders]
        self.embedders = nn.ModuleList(s.embedder for s in specs)
        self.input_keys = [s.input_key for s in specs]
        self.ucg_rates = [float(s.ucg_rate) for s in specs]

    def forward(self, batch: dict, force_zero: Sequence[str] = (), dropout: bool = False,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for embedder, key, rate in zip(self.embedders, self.input_keys, self.ucg_rates):
            if key not in batch:
                raise KeyError(f"conditioning input {key!r} missing from the batch (has {sorted(batch)})")
            emb = embedder(batch[key])
            if dropout and rate > 0:
                keep = torch.bernoulli(torch.full((emb.shape[0],), 1.0 - rate), generator=generator)
                emb = emb * keep.to(emb).reshape(-1, *([1] * (emb.ndim - 1)))
            if key in force_zero:
                emb = torch.zeros_like(emb)
            slot = SLOT_BY_NDIM[emb.ndim]
            out[slot] = torch.cat([out[slot], emb], CAT_DIM[slot]) if slot in out else emb
        return out

    def input_keys_needed(self) -> list[str]:
        return list(self.input_keys)
