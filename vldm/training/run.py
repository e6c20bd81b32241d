"""Run one training stage from a composed config: build, (re)start, fit, export.

The run directory is stable for a given experiment and stage (``paths.output_dir``), so a
killed or requeued job finds ``checkpoints/last.ckpt`` there and resumes at the saved step.
At the end the stage writes ``model.safetensors`` (EMA weights, SGM layout) for the next stage
and for ``sample.py``, and ``result.json`` saying what it did.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from vldm.checkpoints.export import export_safetensors

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


def build_module(cfg: DictConfig, run_dir: Path) -> pl.LightningModule:
    """Instantiate the stage's LightningModule and load what it starts from."""
    from vldm.training.init_from import init_from, load_first_stage

    if cfg.stage.kind == "autoencoder":
        return instantiate(cfg.model.module, _convert_="object")
    module = instantiate(cfg.model.module, trainable=cfg.stage.trainable, sample_dir=str(run_dir / "samples"),
                         _convert_="object")
    if cfg.model.get("first_stage_weights"):
        load_first_stage(module, cfg.model.first_stage_weights)
    if cfg.stage.get("init_from"):
        init_from(module, cfg.stage.init_from, cfg.stage.get("init_mode", "full"))
    return module


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
    wandb_cfg = cfg.logger.get("wandb")
    if wandb_cfg is not None and wandb_cfg.get("enabled", False):
        offline = wandb_cfg.logger.get("offline")
        if offline is None:  # online only when the user has given wandb a key
            offline = not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online")
        try:
            loggers.append(instantiate(wandb_cfg.logger, save_dir=str(run_dir), offline=offline))
        except Exception as err:  # noqa: BLE001 - the CSV log still records the run
            log.warning("wandb logger unavailable (%s); logging to CSV only", err)
    return loggers


def find_resume_checkpoint(run_dir: Path, resume: bool | str) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume in (False, "never", None):
        return None
    if resume in (True, "auto"):
        return last if last.is_file() else None
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    return path


def train_stage(cfg: DictConfig) -> StageResult:
    """Train the stage described by ``cfg`` (see ``configs/train.yaml``)."""
    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.setup("fit")  # fail early on a missing or empty data directory
    module = build_module(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    checkpointing = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step={step:06d}", auto_insert_metric_name=False,
                                    every_n_train_steps=cfg.stage.checkpoint_every, save_top_k=-1, save_last=True)
    trainer: pl.Trainer = instantiate(cfg.trainer, max_steps=cfg.stage.max_steps, default_root_dir=str(run_dir),
                                      logger=build_loggers(cfg, run_dir), callbacks=[checkpointing],
                                      val_check_interval=cfg.stage.val_every, check_val_every_n_epoch=None,
                                      _convert_="object")
    resume_from = find_resume_checkpoint(run_dir, cfg.resume)
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

    weights = export_safetensors(module, run_dir / "model.safetensors",
                                 metadata={"stage": cfg.stage.name, "global_step": str(trainer.global_step)})
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        trainer.save_checkpoint(str(last))
    result = StageResult(run_dir, weights, last, trainer.global_step, time.time() - start)
    skipped = getattr(datamodule, "num_skipped", 0)
    (run_dir / "result.json").write_text(json.dumps({
        "stage": cfg.stage.name, "global_step": result.global_step, "weights": str(weights),
        "last_checkpoint": str(last), "seconds": round(result.seconds, 1), "skipped_samples": skipped,
    }, indent=2))
    log.info("stage %s done: %d steps in %.0f s; weights %s", cfg.stage.name, result.global_step, result.seconds, weights)
    return result
