"""Load a trained model for sampling from a run directory (its ``config.yaml`` + weights)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vldm.checkpoints.safe_load import load_state_dict_file, load_strict
from vldm.training.module import DiffusionModule


def resolve_run(checkpoint: str | Path) -> tuple[Path, Path]:
    """``runs/x/hq`` or ``runs/x/hq/model.safetensors`` -> (run dir, weights file)."""
    path = Path(checkpoint)
    run_dir, weights = (path, path / "model.safetensors") if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights} (give a stage's run directory or its model.safetensors)")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"no config.yaml beside {weights}: cannot tell which model these weights belong to")
    return run_dir, weights


def load_trained(checkpoint: str | Path, map_location: str = "cpu") -> tuple[DiffusionModule, DictConfig]:
    """The stage's module with its exported (EMA) weights, strictly loaded, in eval mode."""
    run_dir, weights = resolve_run(checkpoint)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.stage.get("kind") != "diffusion":
        raise ValueError(f"{run_dir} is a {cfg.stage.get('kind')} stage, not a diffusion model")
    module = instantiate(cfg.model.module, ema_decay=None, sample_dir=None, _convert_="object")
    load_strict(module, load_state_dict_file(weights), what=str(weights))
    return module.to(map_location).eval(), cfg
