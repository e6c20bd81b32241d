"""Shared fixtures: seeding, a tiny toy dataset and the trained smoke chain, each made once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.smoke import file_state, train_smoke_chain


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


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Iterator[Path]:
    """The smoke run root (``runs/smoke``) of the five stages, 4 steps each, each from the one before,
    trained once per test session. Shared and read-only: a test that changes a run works on a copy
    (``shutil.copytree``); teardown fails if any file of the chain was changed, added or removed."""
    run_root = train_smoke_chain(tmp_path_factory.mktemp("smoke_chain"), toy_root)
    before = file_state(run_root)
    yield run_root
    after = file_state(run_root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests changed the shared smoke chain (copy it instead): {changed}"
