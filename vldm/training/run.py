"""Run one training stage from a composed config: build, (re)start, fit, export.

The run directory is stable for a given experiment and stage (``paths.output_dir``), so a
killed or requeued job finds ``checkpoints/last.ckpt`` (or a newer ``hpc_ckpt_*.ckpt`` that
Lightning's SLURM handler wrote) there and resumes at the saved step with the optimizer, EMA and
learning-rate state, the data position (:class:`~vldm.training.data_state.DataPosition`) and the
same wandb run (its id is kept in ``wandb_run_id.txt``). Training noise is seeded per rank and
step (:class:`~vldm.training.data_state.StepSeed`), so ranks draw different noise and a resumed
run draws what the uninterrupted one would have. Under DDP / FSDP every rank runs this function;
files are written by global rank 0. At the end the stage writes ``model.safetensors`` (EMA
weights, SGM layout) for the next stage and for ``sample.py`` (a LoRA stage: ``lora.safetensors``,
:mod:`vldm.training.adapter_stage`), and ``result.json``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from vldm.checkpoints.export import export_metadata, export_safetensors, export_state_dict, fps_record
from vldm.io.safe_load import save_safetensors
from vldm.training.cluster import latest_checkpoint
from vldm.training.data_state import ClipRates, DataPosition, StepSeed
from vldm.utils.distributed import is_global_zero

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StageResult:
    run_dir: Path
    weights: Path
    last_checkpoint: Path | None
    global_step: int
    seconds: float
    trained_steps: int = 0


def stage_module(cfg: DictConfig, **kwargs: Any) -> pl.LightningModule:
    """The stage's LightningModule (``cfg.model.module``), fresh: a diffusion stage's wraps a new
    model built from ``cfg.model.diffusion``; nothing is loaded."""
    if cfg.stage.kind == "autoencoder":
        return instantiate(cfg.model.module, **kwargs, _convert_="object")
    from vldm.checkpoints.load import build_model

    return instantiate(cfg.model.module, model=build_model(cfg.model), **kwargs, _convert_="object")


def build_module(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> pl.LightningModule:
    """Instantiate the stage's LightningModule and load what it starts from (nothing when ``resuming``:
    the checkpoint holds every weight)."""
    from vldm.checkpoints.stage_weights import load_first_stage
    from vldm.training.init_from import init_from

    if cfg.stage.kind == "autoencoder":
        return stage_module(cfg)
    if cfg.stage.get("adapter") is not None:  # a LoRA on a frozen base: the base is loaded on resume too
        from vldm.training.adapter_stage import build_adapter_module

        return build_adapter_module(cfg, run_dir, stage_module)
    module = stage_module(cfg, trainable=cfg.stage.trainable, sample_dir=str(run_dir / "samples"))
    if resuming:
        return module
    if cfg.model.get("first_stage_weights"):
        load_first_stage(module.diffusion, cfg.model.first_stage_weights)
    if cfg.stage.get("temporal_from") and not cfg.stage.get("init_from"):
        raise ValueError(f"stage.temporal_from={cfg.stage.temporal_from} attaches temporal layers to the image model "
                         f"of stage.init_from (with stage.init_mode=inflate), but stage.init_from is not set")
    if cfg.stage.get("init_from"):
        init_from(module, cfg.stage.init_from, cfg.stage.get("init_mode", "full"), cfg.stage.get("temporal_from"))
    return module


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The wandb run id of this run directory: kept in ``wandb_run_id.txt`` and reused when the
    run resumes from a checkpoint (so a killed or requeued job continues the same wandb run); a
    fresh start gets a new one. Only global rank 0 writes it (its logger is the only one used)."""
    path = run_dir / "wandb_run_id.txt"
    if resuming and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if is_global_zero():  # known before the Trainer exists, from the launcher's environment
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list:
    """``logs/metrics.csv`` (its rows before ``resume_step`` kept when resuming; a row per step) and wandb."""
    from vldm.training.metrics_log import ContinuingCSVLogger

    resuming = resume_step is not None
    loggers: list = [ContinuingCSVLogger(str(run_dir), resume_step=resume_step, name="logs", version="",
                                         flush_logs_every_n_steps=1)]
    wandb_cfg = cfg.logger.get("wandb")
    if wandb_cfg is not None and wandb_cfg.get("enabled", False):
        offline = wandb_cfg.logger.get("offline")
        if offline is None:  # online only when the user has given wandb a key
            offline = not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online")
        continued = {}
        if wandb_cfg.logger.get("id") is None:  # an id set by the user wins
            continued = {"id": wandb_run_id(run_dir, resuming), "resume": "allow"}
        try:
            loggers.append(instantiate(wandb_cfg.logger, save_dir=str(run_dir), offline=offline, **continued))
        except Exception as err:  # noqa: BLE001 - the CSV log still records the run
            log.warning("wandb logger unavailable (%s); logging to CSV only", err)
    return loggers


def parse_resume(resume: Any) -> tuple[bool | str, bool]:
    """``(what, force)`` from ``resume``: ``auto`` | ``never`` | ``force`` | a path | ``force:<path>``."""
    text = str(resume) if resume not in (True, False, None) else resume
    if text == "force":
        return "auto", True
    if isinstance(text, str) and text.startswith("force:"):
        return text[len("force:"):], True
    return text, False


def find_resume_checkpoint(run_dir: Path, resume: bool | str) -> Path | None:
    """``auto``: :func:`~vldm.training.cluster.latest_checkpoint` of the run directory (the newest of
    ``checkpoints/last.ckpt`` and Lightning's SLURM requeue checkpoints; None if neither exists);
    ``never``: None; else the path given."""
    if resume in (False, "never", None):
        return None
    if resume in (True, "auto"):
        return latest_checkpoint(run_dir)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    return path


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (read lazily: the tensors stay on disk)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _instantiate_list(items: Any) -> list:
    return [instantiate(item, _convert_="object") for item in (items or [])]


def _export_weights(trainer: pl.Trainer, module: pl.LightningModule, path: Path, metadata: dict) -> Path:
    """``model.safetensors`` with the EMA weights (written by rank 0); a LoRA stage's ``lora.safetensors``. Under
    FSDP the full state dict is gathered first (a collective: every rank calls this)."""
    from pytorch_lightning.strategies import FSDPStrategy

    if getattr(module, "adapter", None) is not None:
        from vldm.training.adapter_stage import export_adapter

        return export_adapter(module, path, metadata) if trainer.is_global_zero else path
    if not isinstance(trainer.strategy, FSDPStrategy):
        return export_safetensors(module, path, metadata=metadata) if trainer.is_global_zero else path
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        save_safetensors(export_state_dict(state), path, export_metadata(metadata))
    return path


def _resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, int]:
    """The checkpoint this run resumes from (checked against its run's config) and its step."""
    from vldm.training.resume_check import check_resume_config

    what, force = parse_resume(cfg.resume)
    resume_from = find_resume_checkpoint(run_dir, what)
    if resume_from is None:
        return None, 0
    check_resume_config(resume_from, cfg, force)
    return resume_from, checkpoint_step(resume_from)


def train_stage(cfg: DictConfig, callbacks: Sequence[Callback] = (), plugins: Sequence[Any] = ()) -> StageResult:
    """Train the stage described by ``cfg`` (see ``configs/train.yaml``).

    ``callbacks`` and ``plugins`` go to the Trainer after those of the config
    (``trainer.callbacks`` / ``trainer.plugins``, lists of ``_target_`` nodes), e.g. Lightning's
    ``SLURMEnvironment`` from the cluster launcher. Raises
    :class:`~vldm.training.resume_check.ResumeConfigMismatch` before anything is written when a
    resumed run's config differs from its stored one, and
    :class:`~vldm.training.graceful_stop.TrainingInterrupted` after SIGINT / SIGTERM (with the
    checkpoint written); ``model.safetensors`` is written only when the stage reached ``max_steps``.
    """
    from vldm.training.graceful_stop import GracefulStop, StopRequested, TrainingInterrupted

    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    resume_from, start_step = _resume_point(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_global_zero():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)  # the same on every rank: identical initial weights

    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.setup("fit")  # fail early on a missing or empty data directory
    module = build_module(cfg, run_dir, resuming=resume_from is not None)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    checkpointing = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step={step:06d}", auto_insert_metric_name=False,
                                    every_n_train_steps=cfg.stage.checkpoint_every, save_top_k=-1, save_last=True)
    stop, rates = GracefulStop(last), ClipRates()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    all_callbacks = [checkpointing, DataPosition(datamodule), StepSeed(cfg.seed), stop, rates,
                     *_instantiate_list(trainer_cfg.pop("callbacks", None)), *callbacks]
    all_plugins = [*_instantiate_list(trainer_cfg.pop("plugins", None)), *plugins]
    loggers = build_loggers(cfg, run_dir, start_step if resume_from is not None else None)
    trainer: pl.Trainer = instantiate(trainer_cfg, max_steps=cfg.stage.max_steps, default_root_dir=str(run_dir),
                                      logger=loggers, callbacks=all_callbacks, plugins=all_plugins or None,
                                      val_check_interval=cfg.stage.val_every, check_val_every_n_epoch=None,
                                      _convert_="object")
    if resume_from is not None:
        log.info("resuming from %s (step %d of %d)", resume_from, start_step, cfg.stage.max_steps)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)  # resume loads tensors and plain containers only
    except FloatingPointError as err:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"training stopped: {err}; {kept}") from err
    except StopRequested:
        pass  # GracefulStop wrote the checkpoint
    if stop.requested:
        name = signal_name(stop.signum)
        raise TrainingInterrupted(f"{name}: training stopped at step {trainer.global_step}; checkpoint {stop.saved}; "
                                  "run the same command again to resume there", stop.signum, stop.saved)

    weights = run_dir / ("lora.safetensors" if cfg.stage.get("adapter") is not None else "model.safetensors")
    trained = trainer.global_step - start_step
    if trained > 0 or not weights.is_file():
        metadata = {"stage": cfg.stage.name, "global_step": str(trainer.global_step)}
        if rates.counts:  # rank 0's clips: every rank draws from the same stream
            metadata["fps"] = fps_record(rates.counts)
        weights = _export_weights(trainer, module, weights, metadata)
    if not trainer.strategy.broadcast(last.is_file()):  # the same decision on every rank: saving is collective
        trainer.save_checkpoint(str(last))
    result = StageResult(run_dir, weights, last, trainer.global_step, time.time() - start, trained)
    if trainer.is_global_zero:
        skipped = getattr(datamodule, "num_skipped", 0)
        (run_dir / "result.json").write_text(json.dumps({
            "stage": cfg.stage.name, "global_step": result.global_step, "trained_steps": trained,
            "weights": str(weights), "last_checkpoint": str(last), "seconds": round(result.seconds, 1),
            "skipped_samples": skipped, "resumed_from": str(resume_from) if resume_from else None,
            "world_size": trainer.world_size,
        }, indent=2))
    if trained == 0:
        log.warning("stage %s was already complete at step %d (stage.max_steps=%d): nothing was trained; to train "
                    "longer raise stage.max_steps, for a new run give a new experiment_name",
                    cfg.stage.name, trainer.global_step, cfg.stage.max_steps)
    else:
        log.info("stage %s done: %d steps (%d in this run) in %.0f s; weights %s", cfg.stage.name,
                 result.global_step, trained, result.seconds, weights)
    return result


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "stop"
