"""Checks before a SLURM submission and the dry run (`hydra/launcher=slurm_dry_run`): what the job
needs at start is checked, the job script is the one the slurm launcher submits, nothing is submitted."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.configs import compose
from tests.helpers.repo import REPO
from vldm.training import cluster


def _launcher(cfg) -> dict:  # noqa: ANN001 - a composed config
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def _real_run(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides of SVD stage II on 2 nodes x 8 GPUs, its files under ``tmp_path``."""
    return ["experiment=svd_video_pretrain", f"paths.root_dir={tmp_path}", f"paths.pretrained={tmp_path}/sd21.safetensors",
            f"model.clip.weights={tmp_path}/open_clip.bin", f"data.train_shards='{tmp_path}/clips/{{000..003}}.tar'",
            "trainer.num_nodes=2", "trainer.devices=8", "hydra.launcher.partition=gpu", *extra]


def _make_files(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    for name in ["sd21.safetensors", "open_clip.bin", *(f"clips/{i:03d}.tar" for i in range(4))]:
        (tmp_path / name).write_bytes(b"")


def test_preflight_names_what_a_real_run_lacks(tmp_path: Path) -> None:
    cfg = compose("train", ["hydra/launcher=slurm", "experiment=svd_video_pretrain", f"paths.root_dir={tmp_path}"],
                  return_hydra_config=True)
    problems, _ = cluster.preflight(cfg, _launcher(cfg))
    assert problems == [
        "data.train_shards is not set: give data.train_shards=<value> on the command line",
        "stage.init_from is not set (it is ${paths.pretrained}): give paths.pretrained=<value> (or "
        "stage.init_from=<value>) on the command line"]
    cfg = compose("train", ["hydra/launcher=slurm", *_real_run(tmp_path)], return_hydra_config=True)
    problems, _ = cluster.preflight(cfg, _launcher(cfg))
    assert problems == [
        f"data.train_shards={tmp_path}/clips/{{000..003}}.tar: shard path '{tmp_path}/clips/000.tar' does not exist "
        f"(from '{tmp_path}/clips/{{000..003}}.tar')",
        f"stage.init_from: {tmp_path}/sd21.safetensors does not exist",
        f"model.clip.weights = model.diffusion.conditioner.embedders.0.embedder.weights: {tmp_path}/open_clip.bin "
        f"does not exist"]
    _make_files(tmp_path)
    problems, notes = cluster.preflight(cfg, _launcher(cfg))
    assert problems == []
    assert f"data.train_shards: 4 shard(s), first {tmp_path}/clips/000.tar" in notes
    assert f"paths.output_dir: {tmp_path}/runs/svd_video_pretrain/video (writable)" in notes


def test_preflight_run_dir_size_resume_and_dependency(tmp_path: Path) -> None:
    _make_files(tmp_path)
    (tmp_path / "runs").write_text("a file where the run root should be")
    cfg = compose("train", ["hydra/launcher=slurm", *_real_run(tmp_path, "hydra.launcher.tasks_per_node=4",
                                                                "resume=/nowhere/last.ckpt")],
                  return_hydra_config=True)
    problems, _ = cluster.preflight(cfg, _launcher(cfg))
    assert problems == [
        "resume: /nowhere/last.ckpt does not exist (auto, never or a checkpoint file)",
        f"paths.output_dir: {tmp_path}/runs/svd_video_pretrain/video: {tmp_path}/runs is not a directory",
        f"hydra.launcher.submitit_folder: {tmp_path}/runs/svd_video_pretrain/.submitit: {tmp_path}/runs is not a "
        f"directory",
        "hydra.launcher.tasks_per_node=4 but trainer.devices=8: one task per device (set trainer.devices only)"]
    # a stage chained after the job that writes its init_from: that file may be missing yet
    (tmp_path / "runs").unlink()
    cfg = compose("train", ["hydra/launcher=slurm", *_real_run(tmp_path, f"stage.init_from={tmp_path}/img/model.safetensors",
                                                                "+hydra.launcher.additional_parameters.dependency=afterok:41")],
                  return_hydra_config=True)
    problems, notes = cluster.preflight(cfg, _launcher(cfg))
    assert problems == []
    assert (f"stage.init_from: {tmp_path}/img/model.safetensors does not exist yet (the job waits for "
            f"dependency=afterok:41)") in notes


def _fake_sbatch(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a stand-in sbatch that keeps the script it is given and fails, so nothing can wait on a job."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch_calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncat "$1" >> {shlex.quote(str(calls))}\n'
                                    'echo "stand-in sbatch: refusing to submit" >&2\nexit 1\n')
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def _train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "train.py", "-m", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"train.py -m {' '.join(args)} did not return within 300 s (waiting on a job?): "
                    f"{(err.stdout or b'')[-2000:]!r}")


@pytest.mark.slow
def test_dry_run_fails_listing_what_is_missing_and_submits_nothing(tmp_path: Path) -> None:
    env, calls = _fake_sbatch(tmp_path)
    proc = _train(["hydra/launcher=slurm_dry_run", *_real_run(tmp_path)], env)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "dry run: 3 problem(s) the job would fail on at start" in proc.stderr, proc.stderr[-3000:]
    for missing in (f"{tmp_path}/clips/000.tar' does not exist", f"stage.init_from: {tmp_path}/sd21.safetensors",
                    f"{tmp_path}/open_clip.bin does not exist"):
        assert missing in proc.stderr
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --ntasks-per-node=8" in proc.stdout
    assert "model svd_image_decoder, data webdataset, 2 node(s) x 8 device(s)" in proc.stdout
    assert not calls.exists()  # sbatch never called

    # the slurm launcher itself refuses the same job before calling sbatch
    proc = _train(["hydra/launcher=slurm", *_real_run(tmp_path)], env)
    assert proc.returncode != 0 and "nothing submitted: 3 problem(s)" in proc.stderr, proc.stderr[-3000:]
    assert not calls.exists()


@pytest.mark.slow
def test_dry_run_script_is_what_the_slurm_launcher_submits(tmp_path: Path) -> None:
    _make_files(tmp_path)
    env, calls = _fake_sbatch(tmp_path)
    dry = _train(["hydra/launcher=slurm_dry_run", *_real_run(tmp_path)], env)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    assert "every check passed; nothing submitted" in dry.stdout and not calls.exists()
    script = dry.stdout.split("the job script for 1 job(s)\n", 1)[1].split("\n[vldm] slurm job 0", 1)[0]
    assert script.startswith("#!/bin/bash") and "#SBATCH --partition=gpu" in script

    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit's SlurmExecutor looks for srun
    (tmp_path / "bin" / "srun").chmod(0o755)
    real = _train(["hydra/launcher=slurm", *_real_run(tmp_path)], env)
    assert real.returncode != 0 and "stand-in sbatch: refusing to submit" in real.stderr, real.stderr[-3000:]
    assert calls.read_text().strip() == script.strip()


@pytest.mark.slow
def test_a_submission_whose_state_cannot_be_followed_returns_naming_the_job(tmp_path: Path) -> None:
    """sbatch accepts the job, sacct cannot report on it (accounting off): submitit would poll forever."""
    _make_files(tmp_path)
    env, calls = _fake_sbatch(tmp_path)
    bin_dir = tmp_path / "bin"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncat "$1" >> {shlex.quote(str(calls))}\necho "Submitted batch job 77"\n')
    (bin_dir / "sacct").write_text('#!/bin/sh\necho "Slurm accounting storage is disabled" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sacct", "srun"):
        (bin_dir / tool).chmod(0o755)
    proc = _train(["hydra/launcher=slurm", *_real_run(tmp_path)], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert ("submitted job(s) 77; not waiting for them: sacct failed: Slurm accounting storage is disabled"
            in proc.stdout)
    assert f"logs in {tmp_path}/runs/svd_video_pretrain/.submitit/77" in proc.stdout
    assert "#SBATCH --nodes=2" in calls.read_text()
