"""torch.distributed helpers for evaluation: which videos a rank makes, and putting results together.

Every helper is a no-op (or the identity) when ``torch.distributed`` is not initialised, so the
single-process path is the same code. Feature statistics are reduced as mergeable sums
(``n``, ``sum``, ``sum_outer``) in float64, which makes the Fréchet distance of a multi-rank run
the one of a single process over the same videos (up to the order of float64 additions).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import numpy as np
import torch

from vldm.utils import distributed
from vldm.utils.distributed import process_group_initialized, process_group_rank_world

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group a launcher (``torchrun``) describes when ``WORLD_SIZE`` > 1 and none is
    initialised yet: NCCL on ``cuda:LOCAL_RANK`` when CUDA is available, else gloo. Returns whether it did.

    Only torchrun's ``WORLD_SIZE`` counts here (not :func:`vldm.utils.distributed.world_size`, which
    falls back to ``SLURM_NTASKS``): the ``env://`` rendezvous also needs ``RANK`` and ``MASTER_ADDR``,
    which srun does not set."""
    if process_group_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        torch.distributed.init_process_group("nccl")
    else:
        torch.distributed.init_process_group("gloo")
    return True


def local_rank() -> int:
    """This process's rank on its machine: the launcher's (:func:`vldm.utils.distributed.local_rank`), else,
    for a process group started without one, the group rank modulo the GPU count."""
    local = distributed.local_rank()
    if local is not None:
        return local
    return process_group_rank_world()[0] % max(torch.cuda.device_count(), 1)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Contiguous, balanced share of ``range(n)`` for ``rank`` (the first ``n % world`` ranks get one more).

    The shares of all ranks, in rank order, concatenate to ``range(n)``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def barrier() -> None:
    if process_group_initialized():
        torch.distributed.barrier()


def all_gather_object_list(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (pickled, any objects); ``items`` itself when alone."""
    if not process_group_initialized():
        return list(items)
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not process_group_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def _reduce_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo (and the rest) CPU tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_stats(stats):  # FeatureStats -> FeatureStats (typed loosely: frechet is imported lazily)
    """Sum ``n``, ``sum`` and ``sum_outer`` of a :class:`~vldm.evaluation.frechet.FeatureStats` over ranks
    (float64); a new object, the input is left alone. Without distribution: a copy of ``stats``."""
    from vldm.evaluation.frechet import FeatureStats

    n = int(stats.n)
    total = np.array(stats.sum, dtype=np.float64, copy=True)
    outer = np.array(stats.sum_outer, dtype=np.float64, copy=True)
    if process_group_initialized():
        device = _reduce_device()
        flat = torch.from_numpy(np.concatenate([[float(n)], total.ravel(), outer.ravel()])).to(device)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat = flat.cpu().numpy()
        d = total.shape[0]
        n = int(round(float(flat[0])))
        total = flat[1:1 + d].copy()
        outer = flat[1 + d:].reshape(d, d).copy()
    return FeatureStats(n=n, sum=total, sum_outer=outer)
