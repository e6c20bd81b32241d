"""Export a vldm-trained video model as one safetensors file in the SVD layout.

The released SVD files (``svd.safetensors``, ``svd_xt.safetensors`` ...) are what sgm's
``DiffusionEngine``, ComfyUI's checkpoint loader and diffusers' ``convert_svd_to_diffusers.py``
read: one file, keys ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (autoencoder),
``conditioner.embedders.0.open_clip.model.*`` (CLIP image tower) and
``conditioner.embedders.3.encoder.*`` (the conditioning-frame autoencoder), fp16, no latent
``scale_factor``, no EMA copy, no optimizer state. A text-to-video model (no released SVD
counterpart) keeps the same UNet and autoencoder keys, its text tower as sgm's
``FrozenOpenCLIPEmbedder`` holds it: ``conditioner.embedders.0.model.*``. A vldm stage's
``model.safetensors`` already uses these names (EMA weights substituted); exporting checks the key
set, drops what the layout does not hold, casts, and streams the tensors one at a time into the new
file. Beside it goes an sgm-style inference yaml (targets ``sgm.models.diffusion.DiffusionEngine``
etc., the structure of sgm's ``configs/inference/svd_image_decoder.yaml`` / ``svd.yaml``) with the
model's own sizes.

    python -m vldm.jobs.export RUN_DIR OUT.safetensors [--dtype fp16|bf16|fp32]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vldm.checkpoints.load import build_model, diffusion_config, resolve_run
from vldm.checkpoints.meta_init import build_on_meta
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.io.identify import missing_file_message
from vldm.io.safe_load import CheckpointError, key_mismatch, write_weights
from vldm.io.tensor_source import TensorSource

log = logging.getLogger(__name__)

SVD_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.open_clip.model.",
                "conditioner.embedders.3.encoder.")
T2V_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.model.")
LAYOUTS = {"image_to_video": (SVD_PREFIXES, "[CLIP image, fps_id, motion_bucket_id, conditioning frame, cond_aug] as "
                                            "in SVD"),
           "text_to_video": (T2V_PREFIXES, "[CLIP text, fps_id, motion_bucket_id] as the text-to-video base model")}
DROPPED_KEYS = ("scale_factor",)
DROPPED_PREFIXES = ("model_ema.",)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Exported:
    """What :func:`export_svd` wrote."""

    weights: Path
    config: Path
    num_tensors: int
    num_parameters: int
    scale_factor: float


def svd_layout_violations(keys: list[str], prefixes: tuple[str, ...] = SVD_PREFIXES) -> list[str]:
    """Keys that the layout (``prefixes``: SVD's image-to-video one by default) does not hold and that export
    does not drop either."""
    return sorted(k for k in keys if not k.startswith(prefixes) and k not in DROPPED_KEYS
                  and not k.startswith(DROPPED_PREFIXES))


def exported_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k not in DROPPED_KEYS and not k.startswith(DROPPED_PREFIXES)]


def _check_exportable(cfg: DictConfig, run_dir: Path) -> None:
    kind = cfg.get("stage", {}).get("kind")
    if kind != "diffusion":
        raise ValueError(f"{run_dir} is a {kind} stage, not a diffusion model: only video models export "
                         f"to the SVD layout")
    if not diffusion_config(cfg.model).network.get("video", False):
        raise ValueError(f"{run_dir} holds a text-to-image (stage 1) model; the SVD layout is for image-to-video and "
                         f"text-to-video models (stage video, hq or i2v): export a video stage's run directory instead")


def export_svd(run_dir: str | Path, out: str | Path, dtype: torch.dtype = torch.float16) -> Exported:
    """Write ``out`` (safetensors, SVD layout) and ``out`` with suffix ``.yaml`` (sgm inference config)."""
    import vldm

    run_dir, weights = resolve_run(run_dir)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {out}")
    if out.resolve() == weights.resolve():
        raise ValueError(f"refusing to overwrite the run's own weights {weights}")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    _check_exportable(cfg, run_dir)
    skeleton = build_on_meta(lambda: build_model(cfg.model))
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with TensorSource(weights) as source:
        shapes = source.shapes()
        parts = key_mismatch(own, shapes)
        if parts:
            raise CheckpointError(f"{weights} does not match its run's config ({run_dir / 'config.yaml'}): "
                                  + "; ".join(parts))
        scale = float(source.get("scale_factor")) if "scale_factor" in shapes else float(skeleton.scale_factor)
        scale = float(f"{scale:.7g}")  # the float32 value, written without float32 noise (0.18215, not ...0063)
        if not scale > 0:
            raise ValueError(f"{run_dir}: the latent scale factor was never set ({scale}); was the stage trained?")
        keys = exported_keys(list(own))
        prefixes, conditioner = LAYOUTS[skeleton.task]
        bad = svd_layout_violations(list(own), prefixes)
        if bad:
            raise CheckpointError(f"{run_dir}'s model has keys outside the SVD layout ({', '.join(bad[:8])}"
                                  f"{', ...' if len(bad) > 8 else ''}; {len(bad)} in all): its conditioner must be "
                                  f"{conditioner}")
        model_cfg = {"diffusion": OmegaConf.to_container(diffusion_config(cfg.model), resolve=True)}
        model_cfg["diffusion"]["scale_factor"] = scale
        unet = sum(int(torch.Size(shapes[k]).numel()) for k in keys if k.startswith("model.diffusion_model."))
        metadata = {
            "format": "svd", "vldm_version": vldm.__version__, "source_run": str(run_dir.resolve()),
            "source_stage": str(cfg.stage.get("name", "")), "global_step": source.metadata.get("global_step", ""),
            "dtype": next(k for k, v in DTYPES.items() if v == dtype), "scale_factor": repr(scale),
            "unet_parameters": str(unet), "model_channels": str(skeleton.network.config.model_channels),
            "num_frames": str(cfg.get("data", {}).get("num_frames", "")),
            "resolution": json.dumps(OmegaConf.to_container(cfg.data.size) if OmegaConf.is_config(cfg.data.size)
                                     else cfg.data.size) if cfg.get("data", {}).get("size") is not None else "",
            "vldm_model_config": json.dumps(model_cfg),
            "sampling": json.dumps(OmegaConf.to_container(cfg.model.sampling, resolve=True)
                                   if cfg.model.get("sampling") is not None else {}),
        }
        if source.metadata.get("fps"):
            metadata["fps"] = source.metadata["fps"]  # the rate the run trained at (sampling's fps preset)
        stored = source.dtypes()
        specs = [(k, shapes[k], dtype if stored[k].is_floating_point else stored[k]) for k in keys]
        write_weights(out, specs, source.get, metadata)
    config_path = out.with_suffix(".yaml")
    config_path.write_text(sgm_inference_yaml(cfg, skeleton, scale, out))
    total = sum(int(torch.Size(shapes[k]).numel()) for k in keys)
    log.info("exported %s (%d tensors, %d parameters) and %s", out, len(keys), total, config_path)
    return Exported(out, config_path, len(keys), total, scale)


def exported_config(path: str | Path) -> DictConfig | None:
    """The model config a file exported by :func:`export_svd` carries (``vldm_model_config``); None for others."""
    from vldm.io.safe_load import file_metadata

    raw = file_metadata(path).get("vldm_model_config")
    return OmegaConf.create(json.loads(raw)) if raw else None


def load_exported(path: str | Path, dtype: torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> LatentDiffusion:
    """The model rebuilt from an exported file's embedded model config and filled strictly
    (as :func:`~vldm.checkpoints.load.load_model_file` loads a file with its config)."""
    from vldm.checkpoints.load import load_model_file

    if not Path(path).is_file():
        raise FileNotFoundError(missing_file_message(str(path)))
    model_cfg = exported_config(path)
    if model_cfg is None:
        raise CheckpointError(f"{path} carries no vldm model config (not written by vldm.checkpoints.svd_export); "
                              f"load an official file with its model config instead (model=svd_xt ...)")
    return load_model_file(model_cfg, path, dtype=dtype, device=device)


# ---------------------------------------------------------------------------- the sgm inference yaml
def _ddconfig(ae: dict[str, Any]) -> dict[str, Any]:
    return {"attn_type": "vanilla", "double_z": True, "z_channels": ae.get("z_channels", 4),
            "resolution": ae.get("resolution", 256), "in_channels": ae.get("in_channels", 3),
            "out_ch": ae.get("out_ch", 3), "ch": ae.get("ch", 128), "ch_mult": list(ae.get("ch_mult", [1, 2, 4, 4])),
            "num_res_blocks": ae.get("num_res_blocks", 2), "attn_resolutions": list(ae.get("attn_resolutions", [])),
            "dropout": ae.get("dropout", 0.0)}


def _autoencoder(ae: dict[str, Any], mode_only: bool = False) -> dict[str, Any]:
    """sgm's legacy ``AutoencoderKL`` (quant convs, image decoder) or an ``AutoencodingEngine``."""
    temporal = ae.get("decoder", "image") == "temporal"
    if ae.get("use_quant_conv", True) and not temporal:
        target = "sgm.models.autoencoder.AutoencoderKLModeOnly" if mode_only else "sgm.models.autoencoder.AutoencoderKL"
        return {"target": target, "params": {"embed_dim": ae.get("embed_dim", 4), "monitor": "val/rec_loss",
                                             "ddconfig": _ddconfig(ae), "lossconfig": {"target": "torch.nn.Identity"}}}
    if mode_only or ae.get("use_quant_conv", True):
        raise ValueError("sgm has no autoencoder class with quant convs and the temporal decoder, nor a mode-only "
                         "conditioning encoder without quant convs: this model cannot be described for sgm")
    decoder: dict[str, Any] = {"target": "sgm.modules.diffusionmodules.model.Decoder", "params": _ddconfig(ae)}
    if temporal:
        decoder = {"target": "sgm.modules.autoencoding.temporal_ae.VideoDecoder",
                   "params": {**_ddconfig(ae), "video_kernel_size": list(ae.get("video_kernel_size", [3, 1, 1]))}}
    return {"target": "sgm.models.autoencoder.AutoencodingEngine", "params": {
        "loss_config": {"target": "torch.nn.Identity"},
        "regularizer_config": {"target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"},
        "encoder_config": {"target": "sgm.modules.diffusionmodules.model.Encoder", "params": _ddconfig(ae)},
        "decoder_config": decoder}}


def _embedder(spec: dict[str, Any], first_stage: dict[str, Any], open_clip_arch: str) -> dict[str, Any]:
    target = spec["embedder"]["_target_"].rsplit(".", 1)[-1]
    entry: dict[str, Any] = {"input_key": spec["input_key"], "is_trainable": False}
    if target == "OpenCLIPImageEmbedder":
        entry.update(target="sgm.modules.encoders.modules.FrozenOpenCLIPImagePredictionEmbedder", params={
            "n_cond_frames": 1, "n_copies": 1, "open_clip_embedding_config": {
                "target": "sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder",
                "params": {"arch": open_clip_arch, "version": None, "freeze": True}}})
    elif target == "OpenCLIPTextEmbedder":
        text_cfg = (spec["embedder"].get("model_cfg") or {}).get("text_cfg", {})
        entry.update(target="sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder", params={
            "arch": open_clip_arch, "version": None, "freeze": True,
            "layer": spec["embedder"].get("layer", "penultimate"), "max_length": text_cfg.get("context_length", 77)})
    elif target == "ConcatTimestepEmbedderND":
        entry.update(target="sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                     params={"outdim": spec["embedder"].get("outdim", 256)})
    elif target == "ConditioningFrameEncoder":
        encoder = spec["embedder"].get("encoder") or first_stage
        entry.update(target="sgm.modules.encoders.modules.VideoPredictionEmbedderWithEncoder", params={
            "disable_encoder_autocast": True, "n_cond_frames": 1, "n_copies": 1, "is_ae": True,
            "encoder_config": _autoencoder(dict(encoder), mode_only=True)})
    else:
        raise ValueError(f"no sgm counterpart known for the embedder {spec['embedder']['_target_']}")
    return entry


SGM_SCALINGS = {"VScalingWithEDMcNoise": "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise",
                "EDMScaling": "sgm.modules.diffusionmodules.denoiser_scaling.EDMScaling"}


def sgm_config(cfg: DictConfig, skeleton: Any, scale: float, open_clip_arch: str) -> dict[str, Any]:
    """The sgm ``DiffusionEngine`` config (a plain dict) of a video run."""
    module = OmegaConf.to_container(diffusion_config(cfg.model), resolve=True)
    net = skeleton.network.config
    scaling = module["denoiser"]["scaling"]["_target_"].rsplit(".", 1)[-1]
    if scaling not in SGM_SCALINGS or module["denoiser"]["_target_"].rsplit(".", 1)[-1] != "Denoiser":
        raise ValueError(f"no sgm counterpart known for the denoiser {module['denoiser']}")
    network = {
        "adm_in_channels": net.adm_in_channels, "num_classes": "sequential" if net.adm_in_channels else None,
        "use_checkpoint": True, "in_channels": net.in_channels, "out_channels": net.out_channels,
        "model_channels": net.model_channels, "attention_resolutions": list(net.attention_resolutions),
        "num_res_blocks": net.num_res_blocks, "channel_mult": list(net.channel_mult),
        "num_head_channels": net.num_head_channels, "use_linear_in_transformer": net.use_linear_in_transformer,
        "transformer_depth": net.transformer_depth, "context_dim": net.context_dim,
        "spatial_transformer_attn_type": "softmax", "extra_ff_mix_layer": net.extra_ff_mix_layer,
        "use_spatial_context": True, "merge_strategy": "learned_with_images", "merge_factor": net.merge_factor,
        "video_kernel_size": list(net.video_kernel_size),
    }
    if not net.adm_in_channels:
        del network["adm_in_channels"], network["num_classes"]
    first_stage = module["first_stage"]
    embedders = [_embedder(spec, first_stage, open_clip_arch) for spec in module["conditioner"]["embedders"]]
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
        "scale_factor": scale, "disable_first_stage_autocast": True,
        "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.Denoiser",
                            "params": {"scaling_config": {"target": SGM_SCALINGS[scaling]}}},
        "network_config": {"target": "sgm.modules.diffusionmodules.video_model.VideoUNet", "params": network},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": embedders}},
        "first_stage_config": _autoencoder(first_stage),
    }}}


def _open_clip_arch(cfg: DictConfig, out: Path) -> tuple[str, str]:
    """(arch name for sgm, a note); a custom tower's config is written as ``<out>.open_clip.json``."""
    for spec in diffusion_config(cfg.model).conditioner.embedders:
        if spec.embedder._target_.endswith(("OpenCLIPImageEmbedder", "OpenCLIPTextEmbedder")):
            if spec.embedder.get("model_cfg") is None:
                return str(spec.embedder.get("arch") or "ViT-H-14"), ""
            path = out.with_name(out.stem + ".open_clip.json")
            path.write_text(json.dumps(OmegaConf.to_container(spec.embedder.model_cfg, resolve=True), indent=2))
            name = path.name[: -len(".json")]
            return name, (f"# The CLIP tower is a custom open_clip config, written to {path.name}: register it "
                          f"first with\n#   open_clip.add_model_config('{path.name}')  (then arch '{name}' resolves)\n")
    return "ViT-H-14", ""


def sgm_inference_yaml(cfg: DictConfig, skeleton: Any, scale: float, out: Path) -> str:
    arch, note = _open_clip_arch(cfg, out)
    header = (f"# sgm inference config for {out.name}, exported by vldm from {cfg.stage.get('name', '?')} "
              f"({cfg.get('experiment_name', '')}).\n# Same structure as sgm configs/inference/svd_image_decoder.yaml "
              f"(svd.yaml for a temporal decoder), with this model's sizes.\n# Attention types are the portable "
              f"'softmax' / 'vanilla' (same weights as the -xformers variants); CLIP 'version: null' because the\n"
              f"# checkpoint holds the tower's weights (nothing is downloaded).\n{note}")
    return header + OmegaConf.to_yaml(OmegaConf.create(sgm_config(cfg, skeleton, scale, arch)))


if __name__ == "__main__":
    raise SystemExit("this module has no command line: export with python -m vldm.jobs.export RUN_DIR OUT.safetensors")
