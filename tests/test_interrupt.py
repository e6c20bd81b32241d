"""SIGINT and SIGTERM while the loader's 8 workers stall: the run writes ``last.ckpt`` at the step
reached without waiting for data, exits with 128 + the signal, leaves no process behind, and the
restart resumes at that step with the loss history of every step kept."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.repo import REPO
from tests.helpers.smoke import smoke_video_args

WORKERS, BATCH = 8, 2
# every worker delivers one batch, then stalls; Lightning fetches one batch ahead of the step it trains
OPEN_STEPS = WORKERS - 1
WAIT_S = 300  # a hang guard only: every wait below ends on a file appearing


def _args(root: Path, toy: Path, gate: Path, *extra: str) -> list[str]:
    marker = f"{{_target_:tests.helpers.gated_data.StepMarker,folder:'{root / 'steps'}'}}"
    return smoke_video_args(root, toy, "logger=csv", "data._target_=tests.helpers.gated_data.GatedDataModule",
                            f"+trainer.callbacks=[{marker}]",
                            f"+data.gate={gate}", f"+data.open_samples={BATCH}", f"data.num_workers={WORKERS}",
                            f"data.batch_size={BATCH}", "stage.checkpoint_every=1000", *extra)


def _steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {WAIT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the job and anything it started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_while_waiting_for_data_checkpoints_and_resumes(tmp_path: Path, toy_root: Path,
                                                               sig: signal.Signals) -> None:
    gate = tmp_path / "gate"
    run_dir = tmp_path / "runs" / "smoke" / "video"
    last = run_dir / "checkpoints" / "last.ckpt"
    log = tmp_path / "train.log"
    proc = _popen(_args(tmp_path, toy_root, gate, "stage.max_steps=1000"), log)
    _wait_for((tmp_path / "steps" / f"step-{OPEN_STEPS}").is_file, proc, log, f"{OPEN_STEPS} steps")
    proc.send_signal(sig)
    # the workers are still stalled: the checkpoint can only come from breaking off the wait for data
    _wait_for(last.is_file, proc, log, "checkpoint while the loader stalls")
    gate.touch()
    assert proc.wait(timeout=WAIT_S) == 128 + sig
    text = log.read_text()
    assert f"{sig.name}: training stopped at step {OPEN_STEPS}" in text
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == OPEN_STEPS
    assert not (run_dir / "model.safetensors").exists()  # an unfinished stage exports nothing
    assert _session_processes(proc.pid) == []

    resumed = subprocess.run([sys.executable, "train.py", *_args(tmp_path, toy_root, gate,
                                                                 f"stage.max_steps={OPEN_STEPS + 2}")],
                             cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"(step {OPEN_STEPS} of {OPEN_STEPS + 2})" in resumed.stdout + resumed.stderr
    assert _steps_logged(run_dir) == list(range(OPEN_STEPS + 2))  # every step once: the history survived


def test_signal_after_a_step_ends_keeps_that_steps_metrics(tmp_path: Path, toy_root: Path) -> None:
    """A signal between a step's end and Lightning logging it stops before the next fetch, with the row kept."""
    gate = tmp_path / "gate"
    gate.touch()  # the data flows: the signal comes from the probe, at the end of step 3
    run_dir = tmp_path / "runs" / "smoke" / "video"
    probe = "{_target_:tests.helpers.gated_data.SignalAtStepEnd,step:3,signum:2}"
    args = _args(tmp_path, toy_root, gate, "stage.max_steps=1000")
    args = [a if not a.startswith("+trainer.callbacks=") else a[:-1] + f",{probe}]" for a in args]
    log = tmp_path / "train.log"
    proc = _popen(args, log)
    assert proc.wait(timeout=WAIT_S) == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert "SIGINT: training stopped at step 4" in log.read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    assert _steps_logged(run_dir) == [0, 1, 2, 3]

    resumed = subprocess.run([sys.executable, "train.py", *_args(tmp_path, toy_root, gate, "stage.max_steps=6")],
                             cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _steps_logged(run_dir) == list(range(6))
