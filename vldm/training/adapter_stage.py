"""A LoRA stage (``stage.adapter``): a frozen base model, a peft LoRA on it that alone trains, its EMA, and
checkpoints that hold only the adapter and the base's identity (Hu et al., 2021; the SVD paper's camera-motion
LoRAs train in the temporal attention of the image-to-video model).

The base is ``stage.init_from`` loaded as this very model (``init_mode: full``), on every start and resume; the
run writes ``lora.safetensors`` (EMA weights, ComfyUI key format, :mod:`vldm.adapters.lora_file`) in place of
``model.safetensors``. ``sample.py checkpoint=<base> lora=[<run>/lora.safetensors:1.0]`` samples with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vldm.adapters.lora import LoraSpec, adapter_parameters, freeze_base, inject_lora
from vldm.adapters.lora_file import base_identity, save_lora
from vldm.checkpoints.stage_weights import stage_weights_file
from vldm.training.ema import AdapterEMA
from vldm.training.module import DiffusionModule

ADAPTER_FILE = "lora.safetensors"


def adapter_spec(cfg: DictConfig) -> LoraSpec | None:
    """The stage's LoRA spec (``stage.adapter``: ``lora`` or a node), or None for a stage without an adapter."""
    node = cfg.stage.get("adapter")
    if node is None:
        return None
    return LoraSpec.from_config(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)


def check_adapter_stage(cfg: DictConfig) -> None:
    """Refuse an adapter stage whose other settings say something else: no base, another init mode, a
    ``trainable`` choice (only the adapter trains), a sharded strategy."""
    if cfg.stage.kind != "diffusion":
        raise ValueError(f"stage.adapter adapts a diffusion model; the {cfg.stage.name} stage is {cfg.stage.kind}")
    if not cfg.stage.get("init_from"):
        raise ValueError("stage.adapter needs a base model: give stage.init_from=<a run directory or weights file>")
    if cfg.stage.get("init_mode", "full") != "full":
        raise ValueError(f"stage.adapter trains a LoRA on the base model itself: give stage.init_mode=full (this stage "
                         f"says {cfg.stage.init_mode!r}, which builds another model from the file)")
    if cfg.stage.get("trainable", "all") != "all":
        raise ValueError(f"stage.trainable={cfg.stage.trainable!r} has no meaning with stage.adapter: only the "
                         "adapter trains, the base is frozen (drop stage.trainable)")
    base = Path(str(cfg.stage.init_from))
    base_dir = base if base.is_dir() or not base.suffix else base.parent
    if base_dir.resolve() == Path(str(cfg.paths.output_dir)).resolve():
        raise ValueError(f"the LoRA run would write into its base's run directory {base_dir}: give the adapter "
                         f"stage its own name, e.g. stage.name=lora")
    strategy = str(cfg.trainer.get("strategy", ""))
    if "fsdp" in strategy.lower():
        raise ValueError("stage.adapter under FSDP is not supported: train the adapter with trainer=ddp (the frozen "
                         "base is replicated, only the adapter's gradients are reduced)")


def attach_adapter(module: DiffusionModule, spec: LoraSpec, base: dict[str, str], ema_decay: float | None) -> list[str]:
    """Inject the LoRA into ``module``'s network, freeze the base, average the adapter (EMA); returns the layer names."""
    names = inject_lora(module.network, spec)
    freeze_base(module.network)
    module.adapter = {"spec": spec.as_dict(), **base}
    module.model_ema = AdapterEMA(module.network, sorted(adapter_parameters(module.network)), ema_decay) \
        if ema_decay else None
    module.strict_loading = False  # a checkpoint holds only the adapter; check_adapter_checkpoint checks its keys
    return names


def build_adapter_module(cfg: DictConfig, run_dir: Path, stage_module: Any) -> DiffusionModule:
    """The stage's module: fresh, the base loaded from ``stage.init_from`` (also when resuming), the LoRA attached."""
    from vldm.training.init_from import init_from

    check_adapter_stage(cfg)
    spec = adapter_spec(cfg)
    module = stage_module(cfg, trainable="all", sample_dir=str(run_dir / "samples"), ema_decay=None)
    init_from(module, cfg.stage.init_from, "full")
    base = base_identity(stage_weights_file(cfg.stage.init_from))
    attach_adapter(module, spec, base, cfg.model.module.get("ema_decay"))
    return module


def export_adapter(module: DiffusionModule, path: Path, metadata: dict[str, str]) -> Path:
    """The adapter as ``lora.safetensors`` (its EMA values when averaged) with the base it was trained on."""
    values = module.model_ema.values() if isinstance(module.model_ema, AdapterEMA) else None
    spec = LoraSpec.from_config({"kind": "lora", **module.adapter["spec"]})
    base = {k: v for k, v in module.adapter.items() if k != "spec"}
    return save_lora(path, module.network, spec, base, values=values, extra={"stage": "lora", **metadata})


def lora_stage_overrides(base_run: str | Path, rank: int = 16, alpha: float = 16.0,
                         targets: str = "temporal_attention", name: str = "lora") -> list[str]:
    """``train.py`` overrides that train a LoRA stage on ``base_run`` (a finished i2v run or its weights file),
    e.g. ``train.py experiment=toy stage=i2v <these>``."""
    return [f"stage.init_from={base_run}", "stage.init_mode=full", f"stage.name={name}",
            f"stage.adapter={{kind:lora,rank:{rank},alpha:{alpha},targets:{targets}}}"]
