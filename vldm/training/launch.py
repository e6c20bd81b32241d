"""``train.py``'s work: check the composed config (no torch yet), train the stage, report it.

Exit status: 0 trained (or already complete), 2 a config mistake or a resume under a changed config,
1 diverged, 128 + signal number after SIGINT / SIGTERM (the checkpoint is written first).
"""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig

from vldm.utils.config_check import ConfigError, refuse_appended_keys

log = logging.getLogger("train")
TOY_DATA = ("toy_images", "toy_videos", "toy_hq", "toy_hq_latent", "toy_videos_latent", "curated_hq")


def _choices_and_overrides() -> tuple[dict, list[str]]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


def describe_run(cfg: DictConfig, choices: dict) -> str:
    """One line: the stage, the model and data configs, clip size, batch and loader workers."""
    data = cfg.data
    size = data.get("size")
    frames = f" x {data.num_frames} frames" if data.get("num_frames") else ""
    return (f"stage {cfg.stage.name}: model={choices.get('model', '?')} data={choices.get('data', '?')} "
            f"size {size}{frames}, batch {data.get('batch_size')}, {data.get('num_workers', 0)} loader workers, "
            f"{cfg.stage.max_steps} steps -> {cfg.paths.output_dir}")


def preflight(cfg: DictConfig, choices: dict, overrides: list[str]) -> None:
    """Config checks that need no torch: appended keys nothing reads; the toy preset on real data."""
    refuse_appended_keys(cfg, overrides)
    toy = choices.get("toy_stage")
    if toy not in (None, "null", "None") and choices.get("data") not in TOY_DATA:
        log.warning("training the toy preset (toy_stage=%s: model=%s) on data=%s at size %s: the toy model is "
                    "meant for the demo's 32 px clips; for a real run use an experiment preset "
                    "(experiment=svd_video_pretrain | svd_finetune, README)", toy, choices.get("model"),
                    choices.get("data"), cfg.data.get("size"))
    workers, cpus = int(cfg.data.get("num_workers") or 0), len(os.sched_getaffinity(0))
    if workers > cpus:
        log.warning("data.num_workers=%d loader processes on %d CPUs: each holds its own shuffle buffer "
                    "(data.shuffle_buffer=%s raw clips); set data.num_workers=%d or fewer", workers, cpus,
                    cfg.data.get("shuffle_buffer"), cpus)


def launch(cfg: DictConfig) -> None:
    """Check, train, print the result line; exits with the status in the module doc on failure."""
    choices, overrides = _choices_and_overrides()
    try:
        preflight(cfg, choices, overrides)
    except ConfigError as err:
        log.error(str(err))
        sys.exit(2)
    log.info(describe_run(cfg, choices))

    from vldm.training.cluster import PruneRequeueCheckpoints, slurm_environment_plugins
    from vldm.training.graceful_stop import TrainingInterrupted
    from vldm.training.resume_check import ResumeConfigMismatch
    from vldm.training.run import TrainingDiverged, train_stage

    try:
        # Lightning owns requeueing under SLURM (docs/cluster.md); the callback drops superseded hpc_ckpt_*.
        result = train_stage(cfg, callbacks=[PruneRequeueCheckpoints()], plugins=slurm_environment_plugins())
    except ResumeConfigMismatch as err:
        log.error(str(err))
        sys.exit(2)
    except TrainingDiverged as err:
        log.error(str(err))
        sys.exit(1)
    except TrainingInterrupted as err:
        log.error(str(err))
        sys.exit(128 + int(err.signum))
    trained = (f"{result.trained_steps} steps trained, at step {result.global_step}" if result.trained_steps
               else f"already complete at step {result.global_step}, nothing trained")
    print(f"[vldm] stage {cfg.stage.name}: {trained}; weights {result.weights}; run dir {result.run_dir}")
