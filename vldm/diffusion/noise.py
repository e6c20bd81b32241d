"""Seeded Gaussian noise for a batch, one generator per sample if asked.

Drawing each sample's noise from its own generator makes a sample depend only on its own seed,
not on its position in the batch or the batch size: video ``i`` of a batched evaluation equals
the video a single call with seed ``i`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def seeded_generators(seed: int | Sequence[int]) -> torch.Generator | list[torch.Generator]:
    """One CPU generator for an ``int`` seed, one per sample for a sequence of seeds."""
    if isinstance(seed, int):
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(int(s)) for s in seed]


def randn(shape: Sequence[int], generator: Generators = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) of ``shape`` on the CPU. With a sequence of ``b`` generators, the first dimension is
    ``b`` equal parts (``b`` samples, or ``b`` clips of frames folded into the batch) and part ``i``
    comes from generator ``i``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)
    gens = list(generator)
    if not gens or shape[0] % len(gens):
        raise ValueError(f"{len(gens)} generators cannot split a batch of {shape[0]} evenly")
    part = (shape[0] // len(gens), *shape[1:])
    return torch.cat([torch.randn(part, generator=g, dtype=dtype) for g in gens])
