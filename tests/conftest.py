"""Shared fixtures: tiny networks, a tiny toy dataset, and configs composed for tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

TINY_UNET = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(1, 2), num_head_channels=16, context_dim=24)


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


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)
