"""Load a model for sampling: a vldm run directory, or an official weights file with a model config."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vldm.io.safe_load import load_state_dict_file, load_strict
from vldm.training.module import DiffusionModule

MODEL_CONFIGS = "svd, svd_xt, svd_xt_1_1, svd_image_decoder, svd_xt_image_decoder, sd21"


def resolve_run(checkpoint: str | Path) -> tuple[Path, Path]:
    """``runs/x/hq`` or ``runs/x/hq/model.safetensors`` -> (run dir, weights file)."""
    path = Path(checkpoint)
    run_dir, weights = (path, path / "model.safetensors") if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights} (give a stage's run directory or its model.safetensors)")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"no config.yaml beside {weights}: cannot tell which model these weights belong to "
                                f"(for an official file name its model, e.g. model=svd_xt; known: {MODEL_CONFIGS})")
    return run_dir, weights


def load_trained(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> tuple[DiffusionModule, DictConfig]:
    """The stage's module with its exported (EMA) weights, strictly loaded, in eval mode."""
    run_dir, weights = resolve_run(checkpoint)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.stage.get("kind") != "diffusion":
        raise ValueError(f"{run_dir} is a {cfg.stage.get('kind')} stage, not a diffusion model")
    module = instantiate(cfg.model.module, ema_decay=None, sample_dir=None, _convert_="object")
    load_strict(module, load_state_dict_file(weights), what=str(weights))
    return module.to(map_location).eval(), cfg


def load_model_file(model_cfg: DictConfig, checkpoint: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> DiffusionModule:
    """A model config (``configs/model/svd_xt.yaml`` ...) filled from one weights file, strictly.

    The module is built on the meta device and each tensor is read memory-mapped and cast as it
    is loaded, so asking for fp16 never makes a full fp32 copy on the host.
    """
    from vldm.checkpoints.official import load_pretrained

    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; with model=... give the weights file itself "
                         f"(or drop model=... to sample from a vldm run directory)")

    def build() -> DiffusionModule:
        return instantiate(model_cfg.module, ema_decay=None, sample_dir=None, _convert_="object")

    layout = str(model_cfg.get("checkpoint_layout", "sgm"))
    # the autoencoders stay fp32 (the official code runs its first stage without autocast); the memory
    # plan may still cast them down when the budget needs it
    keep_fp32 = ("first_stage_model", "conditioner.embedders.3.encoder")
    module = load_pretrained(build, path, dtype=dtype, device=device, layout=layout, keep_fp32=keep_fp32)
    return module.eval()
