"""A run resumes only with the config it was started with: what it trains, on what, from what.

``<run dir>/config.yaml`` is the config a run directory was trained with. Resuming compares it with the
config given now over what decides the weights (:data:`COMPARED`) and refuses any difference,
naming each key, unless ``resume=force``. What may change on a resume (:data:`MAY_CHANGE`): how long
to train and how often to checkpoint and validate, the loader's worker count, devices and nodes,
logging, and the files a fresh start took its weights from (a resume takes every weight from the
checkpoint and does not read them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

COMPARED = ("model", "data", "stage", "seed", "trainer.precision", "trainer.accumulate_grad_batches",
            "trainer.gradient_clip_val")
MAY_CHANGE = ("stage.max_steps", "stage.checkpoint_every", "stage.val_every", "data.num_workers",
              "stage.init_from", "stage.temporal_from")


def _may_change(key: str) -> bool:
    """Resume settings, and where a fresh start's weights came from (``stage.init_from``, ``model.*weights``):
    a resumed run takes every weight from its checkpoint, so a moved file changes nothing."""
    if any(key == m or key.startswith(m + ".") for m in MAY_CHANGE):
        return True
    return key.startswith("model.") and key.rsplit(".", 1)[-1].endswith("weights")


class ResumeConfigMismatch(ValueError):
    """The config given differs from the one the run directory was trained with."""


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _compared(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key in COMPARED:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        flat.update(_flatten(value, key))
    return {k: v for k, v in flat.items() if not _may_change(k)}


def config_differences(stored: DictConfig, current: DictConfig) -> list[str]:
    """``"key: stored -> current"`` for every compared key whose value differs."""
    old, new = _compared(stored), _compared(current)
    return [f"{key}: {_shown(old, key)} -> {_shown(new, key)}" for key in sorted(old.keys() | new.keys())
            if (key in old, old.get(key)) != (key in new, new.get(key))]


def _shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(absent)"


def stored_config_path(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` or ``<run>/hpc_ckpt_n.ckpt``)."""
    folder = checkpoint.parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "config.yaml"


def check_resume_config(checkpoint: Path, current: DictConfig, force: bool) -> None:
    """Refuse to resume ``checkpoint`` under a config that differs from its run's (see the module doc)."""
    path = stored_config_path(checkpoint)
    if not path.is_file():
        if force:
            return
        raise ResumeConfigMismatch(f"{checkpoint} has no config.yaml beside its run directory ({path}), so what it "
                                   "was trained with cannot be checked; resume=force to resume it anyway")
    differences = config_differences(OmegaConf.load(path), current)
    if differences and not force:
        raise ResumeConfigMismatch(
            f"refusing to resume {checkpoint}: the run was trained with a different config ({path}):\n  "
            + "\n  ".join(differences)
            + "\nTo start a new run, give a new experiment_name (or resume=never in a new run directory); "
              "to resume regardless, resume=force.")
