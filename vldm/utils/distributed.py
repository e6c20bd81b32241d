"""Which rank and which device this process is, from its launcher's environment or process group.

Launchers and the variables they set: torchrun ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``GROUP_RANK``; srun ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``; Lightning's own DDP
launcher (``python train.py`` with several devices) gives the processes it starts ``LOCAL_RANK``,
``NODE_RANK`` and ``WORLD_SIZE``, but no ``RANK``. A launcher started inside a SLURM task (torchrun,
or Lightning in ``srun --pty bash``) leaves that task's ``SLURM_*`` in place, so its own variables
win. Every function reads ``os.environ`` (or the initialised ``torch.distributed`` group) when
called; nothing is cached.
"""

from __future__ import annotations

import os

import torch


def global_rank() -> int | None:
    """``RANK`` (torchrun), else ``SLURM_PROCID`` (srun) unless ``LOCAL_RANK`` is set too; None if unknown."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and "LOCAL_RANK" not in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return None


def local_rank() -> int | None:
    """``LOCAL_RANK`` (torchrun, Lightning's DDP processes), else ``SLURM_LOCALID`` (srun); None if neither."""
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
    return None if local is None else int(local)


def node_rank() -> int:
    """``NODE_RANK`` (Lightning), else ``GROUP_RANK`` (torchrun), else 0."""
    return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))


def world_size() -> int:
    """``WORLD_SIZE`` (torchrun, Lightning's DDP processes), else ``SLURM_NTASKS`` (srun), else 1."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def is_global_zero() -> bool:
    """Global rank 0 before any process group exists: :func:`global_rank` 0, else local rank 0 on node 0."""
    rank = global_rank()
    if rank is not None:
        return rank == 0
    return (local_rank() or 0) == 0 and node_rank() == 0


def task_device(name: str) -> str:
    """``cuda`` becomes this task's GPU, ``cuda:<LOCAL_RANK or SLURM_LOCALID>``; other names are kept."""
    if name != "cuda":
        return name
    local = local_rank()
    return "cuda" if local is None else f"cuda:{local}"


def process_group_initialized() -> bool:
    """Whether ``torch.distributed``'s default process group is up (reads no environment variable)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_group_rank_world() -> tuple[int, int]:
    """``(rank, world size)`` in the initialised default process group; ``(0, 1)`` without one."""
    if process_group_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
