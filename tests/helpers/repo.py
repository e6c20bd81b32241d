"""Where the repository and its Hydra configs are."""

from __future__ import annotations

from pathlib import Path

REPO: Path = Path(__file__).resolve().parents[2]
CONFIG_DIR: str = str(REPO / "configs")
