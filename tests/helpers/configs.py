"""The configs of ``configs/`` (train, sample, curate, evaluate) composed with Hydra as their command lines do."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from tests.helpers.repo import CONFIG_DIR


def compose(config_name: str | None, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides`` (``None``: no primary config, only the overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """``train.yaml`` with ``overrides``."""
    return compose("train", overrides)


def compose_eval(overrides: Sequence[str]) -> DictConfig:
    """``evaluate.yaml`` with ``overrides``."""
    return compose("evaluate", overrides)

