"""SLURM launching: the rendered sbatch job, the plain sbatch script, one requeue owner, and a
requeued job resuming through hydra-submitit-launcher's local executor (docs/cluster.md)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.configs import compose
from tests.helpers.repo import CONFIG_DIR, REPO
from vldm.training import cluster

SBATCH_SCRIPT = REPO / "scripts" / "slurm" / "train.sbatch"
SLURM_LAUNCHER = Path(CONFIG_DIR) / "hydra" / "launcher" / "slurm.yaml"


def _fake_tools(bin_dir: Path, **scripts: str) -> dict[str, str]:
    """Executables named after the keys, put first on PATH in the returned environment."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _sbatch_flags(text: str) -> dict[str, str | bool]:
    flags: dict[str, str | bool] = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M):
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else True
    return flags


# --------------------------------------------------------------------------- helpers (fast)

def test_parse_signal_forms_and_batch_only_refusal() -> None:
    assert cluster.parse_signal("USR1@90") == signal.SIGUSR1
    assert cluster.parse_signal("sigusr2") == signal.SIGUSR2
    assert cluster.parse_signal(str(int(signal.SIGTERM))) == signal.SIGTERM
    with pytest.raises(ValueError, match="batch shell"):
        cluster.parse_signal("B:USR1@90")
    with pytest.raises(ValueError, match="unknown signal"):
        cluster.parse_signal("USR9@90")


def test_slurm_detection_and_restart_count() -> None:
    job = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_JOB_NAME": "vldm-video"}
    assert cluster.in_slurm_job(job)
    assert not cluster.in_slurm_job({**job, "SLURM_JOB_NAME": "interactive"})  # srun --pty bash sessions
    assert not cluster.in_slurm_job({"SLURM_JOB_ID": "7"})                    # salloc shell, no srun step
    assert not cluster.in_slurm_job({})
    assert cluster.restart_count(job) == 0 and not cluster.is_requeued(job)
    assert cluster.restart_count({**job, "SLURM_RESTART_COUNT": "2"}) == 2
    assert cluster.is_requeued({"SLURM_RESTART_COUNT": "1"})


def test_plugins_give_lightning_the_requeue_on_the_configured_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    assert cluster.slurm_environment_plugins({}) == []
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(cluster.SIGNAL_ENV, "USR2@60")
    monkeypatch.setenv(cluster.SUBMITIT_SIGNAL_ENV, "TERM")
    (plugin,) = cluster.slurm_environment_plugins()
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue and plugin.requeue_signal == signal.SIGUSR2
    monkeypatch.delenv(cluster.SIGNAL_ENV)
    monkeypatch.delenv(cluster.SUBMITIT_SIGNAL_ENV)
    assert cluster.slurm_environment_plugins()[0].requeue_signal == signal.SIGUSR1  # the default


def test_two_requeue_owners_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cluster.SUBMITIT_SIGNAL_ENV, raising=False)
    cluster.check_single_requeue_owner(signal.SIGUSR1)  # submitit on USR2, nothing on USR1: fine
    with pytest.raises(RuntimeError, match="two requeue owners"):
        cluster.check_single_requeue_owner(signal.SIGUSR1, {cluster.SUBMITIT_SIGNAL_ENV: "USR1"})
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:  # Lightning would skip its handler on a signal that already has one
        with pytest.raises(RuntimeError, match="already has a handler"):
            cluster.check_single_requeue_owner(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_latest_checkpoint_prefers_the_newer_requeue_checkpoint(tmp_path: Path) -> None:
    assert cluster.latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    files = {name: tmp_path / name for name in ["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt",
                                                  "hpc_ckpt_10.ckpt"]}
    for i, name in enumerate(["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "checkpoints/last.ckpt"]):
        files[name].write_bytes(b"x")
        os.utime(files[name], ns=(10**18 + i * 10**9,) * 2)
    assert [p.name for p in cluster.hpc_checkpoints(tmp_path)] == [
        "hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt"]  # by version number, not by name
    assert cluster.latest_checkpoint(tmp_path) == files["checkpoints/last.ckpt"]
    os.utime(files["hpc_ckpt_10.ckpt"], ns=(2 * 10**18,) * 2)  # the signal came after the last periodic save
    assert cluster.latest_checkpoint(tmp_path) == files["hpc_ckpt_10.ckpt"]
    removed = cluster.prune_hpc_checkpoints(tmp_path, keep=files["hpc_ckpt_10.ckpt"])
    assert sorted(p.name for p in removed) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]
    assert [p.name for p in cluster.hpc_checkpoints(tmp_path)] == ["hpc_ckpt_10.ckpt"]


def test_latest_checkpoint_at_equal_write_times_takes_the_highest_requeue_version(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    for path in (last, tmp_path / "hpc_ckpt_1.ckpt"):
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18,) * 2)
    assert cluster.latest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"  # written on the signal, after last
    for name in ("hpc_ckpt_10.ckpt", "hpc_ckpt_2.ckpt"):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(10**18,) * 2)
    assert cluster.latest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_10.ckpt"  # by version, not by name
    os.utime(last, ns=(10**18 + 1,) * 2)  # one nanosecond later is later
    assert cluster.latest_checkpoint(tmp_path) == last


def test_prune_callback_keeps_the_resumed_checkpoint_and_spares_foreign_resumes(tmp_path: Path) -> None:
    from types import SimpleNamespace

    (tmp_path / "checkpoints").mkdir()
    names = ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "checkpoints/last.ckpt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    callback = cluster.PruneRequeueCheckpoints()

    def trainer(ckpt_path: Path | None, zero: bool = True) -> SimpleNamespace:
        return SimpleNamespace(ckpt_path=ckpt_path and str(ckpt_path), is_global_zero=zero,
                               default_root_dir=str(tmp_path))

    callback.on_train_start(trainer(None), None)                              # fresh start
    callback.on_train_start(trainer(tmp_path / "hpc_ckpt_2.ckpt", zero=False), None)  # not rank 0
    callback.on_train_start(trainer(tmp_path.parent / "elsewhere.ckpt"), None)  # resumed from another run
    assert all((tmp_path / name).exists() for name in names)
    callback.on_train_start(trainer(tmp_path / "hpc_ckpt_2.ckpt"), None)
    assert [p.name for p in cluster.hpc_checkpoints(tmp_path)] == ["hpc_ckpt_2.ckpt"]
    callback.on_train_start(trainer(tmp_path / "checkpoints" / "last.ckpt"), None)
    assert cluster.hpc_checkpoints(tmp_path) == [] and (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_prune_callback_in_a_real_resumed_fit(tmp_path: Path) -> None:
    """Lightning sets ckpt_path before on_train_start: the resumed fit prunes the older requeue checkpoint."""
    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    def trainer(steps: int, callbacks: list) -> pl.Trainer:
        return pl.Trainer(max_steps=steps, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                          callbacks=callbacks)

    first = trainer(2, [])
    first.fit(BoringModel())
    first.save_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")
    first.save_checkpoint(tmp_path / "hpc_ckpt_2.ckpt")
    resumed = trainer(3, [cluster.PruneRequeueCheckpoints()])
    resumed.fit(BoringModel(), ckpt_path=str(tmp_path / "hpc_ckpt_2.ckpt"))
    assert resumed.global_step == 3
    assert [p.name for p in cluster.hpc_checkpoints(tmp_path)] == ["hpc_ckpt_2.ckpt"]


# --------------------------------------------------------------------------- configs and scripts

def test_slurm_launcher_follows_the_trainer_and_sends_usr1_to_lightning() -> None:
    """The launcher config resolves from trainer.* and its signal is the one Lightning will handle."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose("train", ["hydra/launcher=slurm", "trainer.num_nodes=3", "trainer.devices=4", "stage=video"],
                  return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (3, 4, 4)
    assert launcher.max_num_timeout == 0 and launcher.additional_parameters.requeue is True
    assert launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}"
    assert launcher.submitit_folder == f"{cfg.paths.run_root}/.submitit/%j"  # stable: no timestamp, same job id
    assert cfg.hydra.sweep.dir == cfg.paths.run_root and cfg.hydra.sweep.subdir == cfg.stage.name
    assert cfg.paths.output_dir == f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
    assert not re.search(r"\$\{now:|%j|job\.id", str(cfg.paths.output_dir))
    instance = HydraConfig.instance()
    saved = instance.cfg
    try:
        instance.set_config(cfg)
        assert cluster.requeue_signal({}) == signal.SIGUSR1
    finally:
        instance.cfg = saved


@pytest.mark.slow
def test_rendered_slurm_job_for_2_nodes_x_8_gpus(tmp_path: Path) -> None:
    """`train.py -m hydra/launcher=slurm` through the real launcher and submitit; only sbatch is fake
    (it keeps the script and refuses the submission). The files the job needs exist (the launcher
    checks them before submitting; tests/test_cluster_dry_run.py)."""
    for name in ("data/toy/videos/train-000000.tar", "data/toy/videos/val-000000.tar",
                 "runs/toy/image/model.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    script = tmp_path / "job.sh"
    env = _fake_tools(tmp_path / "bin", sbatch=f'cp "$1" {shlex.quote(str(script))}\necho "fake sbatch" >&2\nexit 1\n',
                      srun="exit 1\n")
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "stage=video", "trainer=gpu",
           "trainer.num_nodes=2", "trainer.devices=8", "hydra.launcher.partition=gpu", f"paths.root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "fake sbatch" in proc.stderr, proc.stderr[-3000:]
    text = script.read_text()
    flags = _sbatch_flags(text)
    assert flags["nodes"] == "2" and flags["ntasks-per-node"] == "8" and flags["gpus-per-node"] == "8"
    assert flags["signal"] == "USR1@120" and flags["requeue"] is True and flags["open-mode"] == "append"
    assert flags["partition"] == "gpu" and flags["time"] == "1440"
    assert "ntasks" not in flags  # Lightning refuses --ntasks without --ntasks-per-node
    assert f"{tmp_path}/runs/toy/.submitit/%j/" in flags["output"]
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR2" in text
    (launch,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert launch.endswith(f"-m submitit.core._submit {tmp_path}/runs/toy/.submitit/%j")
    assert launch.index("srun") < launch.index(sys.executable)


def test_plain_sbatch_script_runs_train_py_under_srun_with_the_allocation(tmp_path: Path) -> None:
    """The script body with a stand-in srun: the trainer follows the allocation, overrides pass through."""
    env = _fake_tools(tmp_path / "bin", srun='echo "srun $*"; env | grep -E "^(VLDM_|TORCH_NCCL)" | sort\n')
    env.update(SLURM_JOB_ID="77", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="8", SLURM_SUBMIT_DIR=str(REPO),
               TRAINER="fsdp", PYTHON="python3")
    env.pop("VLDM_ROOT", None)
    out = subprocess.run(["bash", str(SBATCH_SCRIPT), "stage=video", "experiment_name=x y"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert ("srun --kill-on-bad-exit=1 python3 train.py trainer=fsdp trainer.num_nodes=2 trainer.devices=8 "
            "stage=video experiment_name=x y\n") in out
    assert f"VLDM_ROOT={REPO}\n" in out and "VLDM_REQUEUE_SIGNAL=USR1\n" in out
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1\n" in out


def test_plain_sbatch_script_is_valid_and_matches_the_launcher() -> None:
    subprocess.run(["bash", "-n", str(SBATCH_SCRIPT)], check=True)
    text = SBATCH_SCRIPT.read_text()
    flags = _sbatch_flags(text)
    assert flags["ntasks-per-node"] == flags["gpus-per-node"] and int(flags["nodes"]) >= 1
    assert flags["requeue"] is True and "ntasks" not in flags
    launcher = yaml.safe_load(SLURM_LAUNCHER.read_text())
    assert cluster.parse_signal(flags["signal"]) == cluster.parse_signal(launcher["additional_parameters"]["signal"])
    assert re.search(rf"export {cluster.SIGNAL_ENV}={cluster.parse_signal(flags['signal']).name[3:]}\b", text)
    (launch,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert "train.py" in launch
    assert 'trainer.devices="${SLURM_NTASKS_PER_NODE}"' in text and 'trainer.num_nodes="${SLURM_NNODES}"' in text


# --------------------------------------------------------------------------- end to end

def _step_checkpoints(run_dir: Path, up_to: int) -> dict[int, int]:
    found = {int(p.stem.split("=")[1]): p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("step=*.ckpt")}
    return {step: mtime for step, mtime in found.items() if step <= up_to}


def _global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.slow
def test_requeue_signal_checkpoints_then_submitit_local_job_resumes(tmp_path: Path, toy_root: Path) -> None:
    """Lightning owns requeueing: under a (simulated) SLURM job step, USR1 makes the rank save
    hpc_ckpt_1.ckpt and call `scontrol requeue <job id>`; the fake scontrol then ends the step with
    SIGTERM as SLURM would. The same command, launched again through hydra-submitit-launcher's
    local executor, resumes in the same run dir from the newest checkpoint (the requeue one, or a
    periodic one written by the step that was running when SIGTERM came) and finishes the stage."""
    run_dir = tmp_path / "runs" / "smoke" / "image"
    calls = tmp_path / "scontrol.log"
    env = _fake_tools(tmp_path / "bin", scontrol=f'echo "$@" >> {shlex.quote(str(calls))}\nkill -TERM "$PPID"\n')
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train",
             "SLURM_NODELIST": "localhost"}
    common = ["stage=image", "experiment=smoke", f"paths.data_dir={toy_root}", f"paths.root_dir={tmp_path}",
              "model.first_stage_weights=null", "trainer.enable_progress_bar=false", "stage.checkpoint_every=1",
              "stage.val_every=100000"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "train.py", *common, "stage.max_steps=100000"], cwd=REPO,
                             env={**env, **slurm}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "step=000001.ckpt").exists():  # handlers are installed by now
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        first.send_signal(signal.SIGUSR1)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    first_end = time.time_ns()
    output = (tmp_path / "first.log").read_text()
    assert calls.read_text().split() == ["requeue", "4242"], output[-3000:]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    hpc_step = _global_step(hpc)
    resume_from = cluster.latest_checkpoint(run_dir)
    resume_step = _global_step(resume_from)
    assert 1 <= hpc_step <= resume_step <= hpc_step + 1  # SIGTERM lets at most the running step finish
    assert not (run_dir / "model.safetensors").exists()  # stopped, not finished
    before = _step_checkpoints(run_dir, resume_step)

    sweep = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *common,
                            f"stage.max_steps={resume_step + 2}", "resume=auto"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == resume_step + 2 and Path(result["resumed_from"]) == resume_from
    assert (run_dir / "model.safetensors").is_file() and list((tmp_path / "runs" / "smoke" / ".submitit").iterdir())
    assert _step_checkpoints(run_dir, resume_step) == before  # nothing up to the saved step was trained again
    after = _step_checkpoints(run_dir, resume_step + 2)
    assert all(after[s] > first_end for s in (resume_step + 1, resume_step + 2))
