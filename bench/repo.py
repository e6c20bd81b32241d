"""Where the repository, its Hydra configs and the benchmark results are; configs composed from there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

ROOT: Path = Path(__file__).resolve().parents[1]
CONFIG_DIR: Path = ROOT / "configs"
RESULTS: Path = ROOT / "bench" / "results"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/<config_name>.yaml`` (train, curate, ...) with ``overrides``, as its command line composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))
