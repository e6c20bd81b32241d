"""Load a model: a vldm run directory, or a weights file with the model config it belongs to.

Every path gives a :class:`~vldm.models.LatentDiffusion` in eval mode, strictly loaded; none needs
Lightning. A run directory's ``config.yaml`` names the model (``model.diffusion``); run directories
whose config still has the whole model under ``model.module`` (a ``DiffusionModule`` node) load too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vldm.io.safe_load import CheckpointError, file_metadata, load_state_dict_file, load_strict
from vldm.models.latent_diffusion import LatentDiffusion

MODEL_CONFIGS = "svd, svd_xt, svd_xt_1_1, svd_image_decoder, svd_xt_image_decoder, sd21"
MODEL_TARGET = "vldm.models.latent_diffusion.LatentDiffusion"
MODEL_ARGS = ("network", "first_stage", "conditioner", "denoiser", "scale_factor", "image_to_video", "sampler",
              "uncond_text")


def diffusion_config(model_cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """The model's node (``model.diffusion``), also from a config that kept it inside ``model.module``."""
    model_cfg = model_cfg if isinstance(model_cfg, DictConfig) else OmegaConf.create(model_cfg)
    if model_cfg.get("diffusion") is not None:
        return model_cfg.diffusion
    module = model_cfg.get("module")
    if module is None or str(module.get("_target_", "")).rsplit(".", 1)[-1] != "DiffusionModule":
        raise ValueError("the model config has no diffusion model (model.diffusion): it is not a diffusion stage")
    legacy = OmegaConf.to_container(module, resolve=True)
    return OmegaConf.create({"_target_": MODEL_TARGET, **{k: legacy[k] for k in MODEL_ARGS if k in legacy}})


def build_model(model_cfg: DictConfig | dict[str, Any]) -> LatentDiffusion:
    """A fresh model from a model config (``configs/model/*.yaml`` or a run's ``model`` node)."""
    from hydra.utils import instantiate

    return instantiate(diffusion_config(model_cfg), _convert_="object")


def resolve_run(checkpoint: str | Path) -> tuple[Path, Path]:
    """``runs/x/hq`` or ``runs/x/hq/model.safetensors`` -> (run dir, weights file)."""
    path = Path(checkpoint)
    run_dir, weights = (path, path / "model.safetensors") if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        lora = run_dir / "lora.safetensors"
        if lora.is_file():
            base = file_metadata(lora).get("vldm_base", "its base model")
            raise FileNotFoundError(f"{run_dir} is a LoRA stage: it holds an adapter, not a model; sample its base "
                                    f"with the adapter, e.g. checkpoint={base} lora=[{lora}:1.0]")
        raise FileNotFoundError(f"no weights at {weights} (give a stage's run directory or its model.safetensors)")
    if not (run_dir / "config.yaml").is_file():
        if "vldm_model_config" in file_metadata(weights):
            raise FileNotFoundError(f"{weights} is a vldm export (it carries its model config), not a run directory: "
                                    f"load it with vldm.checkpoints.svd_export.load_exported, or sample it with "
                                    f"python sample.py checkpoint={weights} image=...")
        raise FileNotFoundError(f"no config.yaml beside {weights}: cannot tell which model these weights belong to "
                                f"(for an official file name its model, e.g. model=svd_xt; known: {MODEL_CONFIGS})")
    return run_dir, weights


def load_run(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentDiffusion, DictConfig]:
    """A stage's model with its exported (EMA) weights, and the run's config."""
    run_dir, weights = resolve_run(checkpoint)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.stage.get("kind") != "diffusion":
        raise ValueError(f"{run_dir} is a {cfg.stage.get('kind')} stage, not a diffusion model")
    model = build_model(cfg.model)
    load_strict(model, load_state_dict_file(weights), what=str(weights))
    return model.to(map_location).eval(), cfg


def load_model_file(model_cfg: DictConfig, checkpoint: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> LatentDiffusion:
    """A model config (``configs/model/svd_xt.yaml`` ...) filled from one weights file, strictly.

    The model is built on the meta device and each tensor is read memory-mapped and cast as it
    is loaded, so asking for fp16 never makes a full fp32 copy on the host.
    """
    from vldm.checkpoints.official import ModelMismatch, load_pretrained

    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; with model=... give the weights file itself "
                         f"(or drop model=... to sample from a vldm run directory)")
    layout = str(model_cfg.get("checkpoint_layout", "sgm"))
    # the autoencoders stay fp32 (the official code runs its first stage without autocast); the memory
    # plan may still cast them down when the budget needs it
    keep_fp32 = ("first_stage_model", "conditioner.embedders.3.encoder")
    try:
        model = load_pretrained(lambda: build_model(model_cfg), path, dtype=dtype, device=device, layout=layout,
                                keep_fp32=keep_fp32)
    except ModelMismatch as err:
        exported = exported_mismatch(model_cfg, path)
        if exported:
            raise CheckpointError(exported) from err
        raise
    return model.eval()


def exported_mismatch(model_cfg: DictConfig, path: Path) -> str:
    """For a vldm export that does not fit ``model_cfg``: what the file is and what the config is (else ``""``)."""
    meta = file_metadata(path)
    if "vldm_model_config" not in meta:
        return ""
    network = diffusion_config(model_cfg).get("network") or {}
    chosen = f"model={model_cfg.name}" if model_cfg.get("name") else "being loaded"
    return (f"{path} is a vldm model exported by vldm.checkpoints.svd_export (stage '{meta.get('source_stage', '?')}' "
            f"of {meta.get('source_run', '?')}: model_channels={meta.get('model_channels', '?')}, "
            f"{meta.get('unet_parameters', '?')} UNet parameters, trained at size {meta.get('resolution', '?')} "
            f"with {meta.get('num_frames', '?')} frames), but the model config {chosen} is another model "
            f"(model_channels={network.get('model_channels', '?')}): the file carries its own model config, so drop "
            f"model=... (python sample.py checkpoint={path} image=...)")
