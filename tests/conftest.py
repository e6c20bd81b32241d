"""Shared fixtures: seeding and a tiny toy dataset made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small toy dataset (48 train clips, 6 held-out), made once per test session."""
    from vldm.jobs.toy_data import write_toy_dataset

    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, num_train=48, num_val=6, samples_per_shard=16)
    return root
