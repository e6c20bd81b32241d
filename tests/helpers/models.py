"""Tiny models for tests: UNet sizes, the toy video and reduced SD 2.1 configs, random weights, state files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from tests.helpers.configs import compose_train

TINY_UNET = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(1, 2), num_head_channels=16, context_dim=24)

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_AE = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "resolution": 32}

TINY_SD21 = [
    "model=sd21",
    "model.diffusion.network.model_channels=32", "model.diffusion.network.channel_mult=[1,2]",
    "model.diffusion.network.num_res_blocks=1", "model.diffusion.network.attention_resolutions=[1,2]",
    "model.diffusion.network.num_head_channels=16", "model.diffusion.network.context_dim=64",
    "model.diffusion.first_stage.ch=32", "model.diffusion.first_stage.ch_mult=[1,1,2]",
    "model.diffusion.first_stage.num_res_blocks=1", "model.diffusion.first_stage.resolution=32",
    "model.clip.require_weights=false", "model.clip_weights=null", "model.diffusion.sampler.num_steps=4",
    "model.clip.model_cfg={embed_dim:64,vision_cfg:{image_size:32,patch_size:8,width:64,layers:2,head_width:32},"
    "text_cfg:{context_length:32,vocab_size:49408,width:64,heads:2,layers:2}}",
]


def builder(model_cfg: DictConfig) -> Callable[[], nn.Module]:
    """What ``sample.py`` builds for ``model=...``: the module without EMA or sample writer."""
    from vldm.checkpoints.load import build_model

    return lambda: build_model(model_cfg)


def tiny_i2v_cfg() -> DictConfig:
    """The ``model`` node of the toy image-to-video stage."""
    return compose_train(["stage=i2v"]).model


def tiny_sd21_cfg(*extra: str) -> DictConfig:
    """The ``model`` node of SD 2.1 at test size (:data:`TINY_SD21`), with ``extra`` overrides."""
    return compose_train([*TINY_SD21, *extra]).model


def randomize(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Every parameter drawn anew (no zero-initialised branch stays zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def save_state(state: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    """``state`` as a safetensors file (tensors copied out of any shared storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def meta_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of what ``build`` makes, built on ``meta`` (no memory)."""
    from vldm.checkpoints.meta_init import build_on_meta

    module = build_on_meta(build)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def tiny_svd_cfg(model: str = "svd_xt"):
    """The SVD model config with every width shrunk (same classes, same key structure)."""
    from omegaconf import OmegaConf

    cfg = compose_train([f"model={model}"])
    OmegaConf.set_struct(cfg, False)
    net = cfg.model.diffusion.network
    net.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2],
               num_head_channels=16, context_dim=TINY_CLIP["embed_dim"], adm_in_channels=3 * 16)
    for i in (1, 2, 4):
        cfg.model.diffusion.conditioner.embedders[i].embedder.outdim = 16
    clip = cfg.model.diffusion.conditioner.embedders[0].embedder
    clip.arch, clip.model_cfg = None, TINY_CLIP
    cfg.model.diffusion.first_stage.update(TINY_AE)
    cfg.model.cond_frame_encoder.update(TINY_AE)
    return cfg


def ldm_file(module: torch.nn.Module, path: Path, schedule: dict | None = None, extra: dict | None = None) -> Path:
    """``module``'s weights as the LDM layout of v2-1_768-ema-pruned: text tower under
    ``cond_stage_model.``, the DDPM schedule buffers, the EMA bookkeeping scalars."""
    from vldm.checkpoints.ldm_layout import ldm_schedule, to_ldm_key
    from vldm.diffusion.discretization import ddpm_sigmas

    state = {to_ldm_key(k): v for k, v in module.state_dict().items()}
    state.update({k: v.float() for k, v in (schedule or ldm_schedule(ddpm_sigmas())).items()})
    state.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5, dtype=torch.int32)})
    state.update(extra or {})
    return save_state(state, path)
