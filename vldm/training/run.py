"""Run one training stage from a composed config: build, (re)start, fit, export.

The run directory is stable for a given experiment and stage (``paths.output_dir``), so a
killed or requeued job finds ``checkpoints/last.ckpt`` (or a newer ``hpc_ckpt_*.ckpt`` that
Lightning's SLURM handler wrote) there and resumes at the saved step with the optimizer, EMA and
learning-rate state, the data position (:class:`~vldm.training.data_state.DataPosition`) and the
same wandb run (its id is kept in ``wandb_run_id.txt``). Training noise is seeded per rank and
step (:class:`~vldm.training.data_state.StepSeed`), so ranks draw different noise and a resumed
run draws what the uninterrupted one would have. Under DDP / FSDP every rank runs this function;
files are written by global rank 0. At the end the stage writes ``model.safetensors`` (EMA
weights, SGM layout) for the next stage and for ``sample.py``, and ``result.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from vldm.checkpoints.export import export_metadata, export_safetensors, export_state_dict
from vldm.io.safe_load import save_safetensors
from vldm.training.cluster import latest_checkpoint
from vldm.training.data_state import DataPosition, StepSeed
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


def stage_module(cfg: DictConfig, **kwargs: Any) -> pl.LightningModule:
    """The stage's LightningModule (``cfg.model.module``), fresh: a diffusion stage's wraps a new
    model built from ``cfg.model.diffusion``; nothing is loaded."""
    if cfg.stage.kind == "autoencoder":
        return instantiate(cfg.model.module, **kwargs, _convert_="object")
    from vldm.checkpoints.load import build_model

    return instantiate(cfg.model.module, model=build_model(cfg.model), **kwargs, _convert_="object")


def build_module(cfg: DictConfig, run_dir: Path) -> pl.LightningModule:
    """Instantiate the stage's LightningModule and load what it starts from."""
    from vldm.checkpoints.stage_weights import load_first_stage
    from vldm.training.init_from import init_from

    if cfg.stage.kind == "autoencoder":
        return stage_module(cfg)
    module = stage_module(cfg, trainable=cfg.stage.trainable, sample_dir=str(run_dir / "samples"))
    if cfg.model.get("first_stage_weights"):
        load_first_stage(module.diffusion, cfg.model.first_stage_weights)
    if cfg.stage.get("init_from"):
        init_from(module, cfg.stage.init_from, cfg.stage.get("init_mode", "full"))
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


def build_loggers(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
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


def _instantiate_list(items: Any) -> list:
    return [instantiate(item, _convert_="object") for item in (items or [])]


def _export_weights(trainer: pl.Trainer, module: pl.LightningModule, path: Path, metadata: dict) -> Path:
    """``model.safetensors`` with the EMA weights (written by rank 0). Under FSDP the full state
    dict is gathered first (a collective: every rank calls this)."""
    from pytorch_lightning.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return export_safetensors(module, path, metadata=metadata) if trainer.is_global_zero else path
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        save_safetensors(export_state_dict(state), path, export_metadata(metadata))
    return path


def train_stage(cfg: DictConfig, callbacks: Sequence[Callback] = (), plugins: Sequence[Any] = ()) -> StageResult:
    """Train the stage described by ``cfg`` (see ``configs/train.yaml``).

    ``callbacks`` and ``plugins`` go to the Trainer after those of the config
    (``trainer.callbacks`` / ``trainer.plugins``, lists of ``_target_`` nodes), e.g. Lightning's
    ``SLURMEnvironment`` from the cluster launcher.
    """
    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_global_zero():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)  # the same on every rank: identical initial weights

    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.setup("fit")  # fail early on a missing or empty data directory
    module = build_module(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    checkpointing = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step={step:06d}", auto_insert_metric_name=False,
                                    every_n_train_steps=cfg.stage.checkpoint_every, save_top_k=-1, save_last=True)
    resume_from = find_resume_checkpoint(run_dir, cfg.resume)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    all_callbacks = [checkpointing, DataPosition(datamodule), StepSeed(cfg.seed),
                     *_instantiate_list(trainer_cfg.pop("callbacks", None)), *callbacks]
    all_plugins = [*_instantiate_list(trainer_cfg.pop("plugins", None)), *plugins]
    trainer: pl.Trainer = instantiate(trainer_cfg, max_steps=cfg.stage.max_steps, default_root_dir=str(run_dir),
                                      logger=build_loggers(cfg, run_dir, resume_from is not None),
                                      callbacks=all_callbacks, plugins=all_plugins or None,
                                      val_check_interval=cfg.stage.val_every, check_val_every_n_epoch=None,
                                      _convert_="object")
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except FloatingPointError as err:
        last = ckpt_dir / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"training stopped: {err}; {kept}") from err
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training interrupted at step {trainer.global_step}; resume from {ckpt_dir / 'last.ckpt'}")

    weights = _export_weights(trainer, module, run_dir / "model.safetensors",
                              {"stage": cfg.stage.name, "global_step": str(trainer.global_step)})
    last = ckpt_dir / "last.ckpt"
    if not trainer.strategy.broadcast(last.is_file()):  # the same decision on every rank: saving is collective
        trainer.save_checkpoint(str(last))
    result = StageResult(run_dir, weights, last, trainer.global_step, time.time() - start)
    if trainer.is_global_zero:
        skipped = getattr(datamodule, "num_skipped", 0)
        (run_dir / "result.json").write_text(json.dumps({
            "stage": cfg.stage.name, "global_step": result.global_step, "weights": str(weights),
            "last_checkpoint": str(last), "seconds": round(result.seconds, 1), "skipped_samples": skipped,
            "resumed_from": str(resume_from) if resume_from else None,
            "world_size": trainer.world_size,
        }, indent=2))
    log.info("stage %s done: %d steps in %.0f s; weights %s", cfg.stage.name, result.global_step, result.seconds, weights)
    return result
