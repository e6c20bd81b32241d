"""The smoke experiment (4-step stages on the toy data): its configs and command lines, and a trained stage chain."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from tests.helpers.configs import compose_train

STAGES = ("autoencoder", "image", "video", "hq", "i2v")


def smoke(root: Path, toy: Path, stage: str, *extra: str) -> DictConfig:
    """``train.yaml`` for ``stage`` of the smoke experiment on the toy data ``toy``, writing under ``root``."""
    return compose_train([f"stage={stage}", "experiment=smoke", f"paths.data_dir={toy}",
                          f"paths.root_dir={root}", "trainer.enable_progress_bar=false", *extra])


def smoke_video_args(root: Path, toy: Path, *extra: str) -> list[str]:
    """``train.py`` arguments: the smoke video stage from random weights (no image stage), no validation."""
    return ["experiment=smoke", "stage=video", "stage.init_from=null", f"paths.data_dir={toy}",
            f"paths.root_dir={root}", "trainer.enable_progress_bar=false", "stage.val_every=1000", *extra]


def train_smoke_chain(root: Path, toy: Path) -> Path:
    """Trains the :data:`STAGES` in order, each from the one before; returns the run root ``root/runs/smoke``."""
    from vldm.training.run import train_stage

    for stage in STAGES:
        train_stage(smoke(root, toy, stage))
    return root / "runs" / "smoke"


def file_state(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
