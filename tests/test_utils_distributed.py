"""Rank and device discovery from the launcher's environment (torchrun, srun, Lightning's DDP launcher)."""

from __future__ import annotations

import pytest

from vldm.utils import distributed

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_LOCALID",
                 "SLURM_NTASKS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process no launcher started; set variables with ``env.setenv``."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plain_process_is_rank_zero_of_one(env: pytest.MonkeyPatch) -> None:
    assert distributed.global_rank() is None and distributed.local_rank() is None
    assert distributed.world_size() == 1 and distributed.node_rank() == 0 and distributed.is_global_zero()
    assert distributed.process_group_rank_world() == (0, 1) and not distributed.process_group_initialized()


def test_torchrun(env: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "GROUP_RANK": "2"}.items():
        env.setenv(name, value)
    assert (distributed.global_rank(), distributed.local_rank(), distributed.world_size()) == (5, 1, 8)
    assert distributed.node_rank() == 2 and not distributed.is_global_zero()
    env.setenv("RANK", "0")
    assert distributed.is_global_zero()


def test_srun(env: pytest.MonkeyPatch) -> None:
    for name, value in {"SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_NTASKS": "4"}.items():
        env.setenv(name, value)
    assert (distributed.global_rank(), distributed.local_rank(), distributed.world_size()) == (3, 3, 4)
    assert not distributed.is_global_zero()
    env.setenv("SLURM_PROCID", "0")
    assert distributed.is_global_zero()


def test_torchrun_inside_a_slurm_task_wins(env: pytest.MonkeyPatch) -> None:
    for name, value in {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
                        "RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "4"}.items():
        env.setenv(name, value)
    assert (distributed.global_rank(), distributed.local_rank(), distributed.world_size()) == (3, 3, 4)
    assert not distributed.is_global_zero()


def test_lightning_ddp_processes(env: pytest.MonkeyPatch) -> None:
    """Lightning's launcher gives the processes it starts LOCAL_RANK and NODE_RANK, no RANK (here inside
    an interactive SLURM task, whose SLURM_PROCID is 0 for all of them)."""
    env.setenv("SLURM_PROCID", "0")
    env.setenv("LOCAL_RANK", "1")
    env.setenv("NODE_RANK", "0")
    assert distributed.global_rank() is None and not distributed.is_global_zero()
    env.setenv("LOCAL_RANK", "0")
    assert distributed.is_global_zero()
    env.setenv("NODE_RANK", "1")
    assert not distributed.is_global_zero()


def test_cuda_means_the_task_local_gpu(env: pytest.MonkeyPatch) -> None:
    assert distributed.task_device("cuda") == "cuda" and distributed.task_device("cpu") == "cpu"
    env.setenv("SLURM_LOCALID", "5")
    assert distributed.task_device("cuda") == "cuda:5"
    assert distributed.task_device("cuda:1") == "cuda:1" and distributed.task_device("cpu") == "cpu"
    env.setenv("LOCAL_RANK", "2")
    assert distributed.task_device("cuda") == "cuda:2"
