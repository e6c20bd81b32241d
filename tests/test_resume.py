"""Resume for real: a training process killed with SIGKILL mid-run continues at the saved step
with the saved optimizer and EMA state, the data stream where it was and the same wandb run,
and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from tests.helpers.repo import REPO
from tests.helpers.smoke import smoke_video_args

STEPS, EVERY = 8, 2


class StateProbe(Callback):
    """Test probe: the global step, optimizer state and EMA state a run starts training with
    (after any checkpoint was restored), saved as ``start-<pid>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": trainer.global_step, "optimizer": trainer.optimizers[0].state_dict(),
                    "ema": pl_module.model_ema.shadow.state_dict()}, self.out_dir / f"start-{os.getpid()}.pt")


def _args(root: Path, toy: Path, *extra: str) -> list[str]:
    return smoke_video_args(root, toy, f"stage.max_steps={STEPS}", f"stage.checkpoint_every={EVERY}",
                            "+data.resume_mode=exact", *extra)


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    # an in-process wandb.init of an earlier test leaves WANDB_SERVICE set; a child inheriting it would
    # register its run with this process's wandb service, which still holds the killed run's id
    env.pop("WANDB_SERVICE", None)
    # a session of its own: the kill below takes the whole job, wandb's service process included, as
    # SLURM or a node failure would (a survivor would still hold the wandb run id)
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _losses(run_dir: Path) -> dict[int, str]:
    """``{step: train/loss}`` of a run's ``logs/metrics.csv``; a step logged twice fails."""
    import csv

    with (run_dir / "logs" / "metrics.csv").open(newline="") as file:
        rows = [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(file) if r.get("train/loss")]
    assert len({step for step, _ in rows}) == len(rows), rows
    return dict(rows)


def _assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path: Path, toy_root: Path) -> None:
    """Run B is SIGKILLed once its step-4 checkpoint exists and restarted; it resumes
    at the step of ``last.ckpt`` with that optimizer and EMA state, continues the data stream and
    the wandb run, and ends bit-identical to run A, trained without interruption."""
    probe = tmp_path / "probe"
    b_args = _args(tmp_path / "b", toy_root, "logger.wandb.enabled=true",
                   f"+trainer.callbacks=[{{_target_:tests.test_resume.StateProbe,out_dir:'{probe}'}}]")
    run_a = _popen(_args(tmp_path / "a", toy_root), tmp_path / "a.log")
    run_b = _popen(b_args, tmp_path / "b1.log")
    b_dir = tmp_path / "b" / "runs" / "smoke" / "video"
    deadline = time.time() + 240
    while not (b_dir / "checkpoints" / "step=000004.ckpt").is_file():
        assert run_b.poll() is None and time.time() < deadline, (tmp_path / "b1.log").read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(run_b.pid, signal.SIGKILL)
    assert run_b.wait() == -signal.SIGKILL  # killed mid-run, not finished
    saved = _load(b_dir / "checkpoints" / "last.ckpt")
    shutil.copy(b_dir / "checkpoints" / "last.ckpt", tmp_path / "saved.ckpt")
    assert EVERY <= saved["global_step"] < STEPS and not (b_dir / "model.safetensors").exists()
    run_id = (b_dir / "wandb_run_id.txt").read_text().strip()

    rerun = _popen(b_args, tmp_path / "b2.log")
    assert rerun.wait(timeout=240) == 0, (tmp_path / "b2.log").read_text()[-3000:]
    assert run_a.wait(timeout=240) == 0, (tmp_path / "a.log").read_text()[-3000:]

    # the restarted process began at the saved step, with the saved optimizer and EMA state
    starts = sorted((_load(p) for p in probe.glob("start-*.pt")), key=lambda s: s["global_step"])
    assert [s["global_step"] for s in starts] == [0, saved["global_step"]]
    resumed = starts[1]
    _assert_same_tensors(resumed["optimizer"], saved["optimizer_states"][0], "optimizer")
    ema = {k[len("model_ema.shadow."):]: v for k, v in saved["state_dict"].items() if k.startswith("model_ema.shadow.")}
    _assert_same_tensors(resumed["ema"], ema, "ema")
    assert int(saved["state_dict"]["model_ema.num_updates"]) == saved["global_step"]

    # ... and ended where the uninterrupted run ended: same data, same noise, same weights
    a_dir = tmp_path / "a" / "runs" / "smoke" / "video"
    final_a, final_b = _load(a_dir / "checkpoints" / "last.ckpt"), _load(b_dir / "checkpoints" / "last.ckpt")
    assert final_a["global_step"] == final_b["global_step"] == STEPS
    unet = [k for k in saved["state_dict"] if k.startswith("diffusion.model.diffusion_model.")]
    assert sum(not torch.equal(saved["state_dict"][k], final_b["state_dict"][k]) for k in unet) > len(unet) // 2
    _assert_same_tensors(final_b["state_dict"], final_a["state_dict"], "state_dict")
    _assert_same_tensors(final_b["optimizer_states"], final_a["optimizer_states"], "optimizer_states")
    assert final_b["callbacks"]["DataPosition"] == final_a["callbacks"]["DataPosition"]
    from safetensors import safe_open

    with safe_open(a_dir / "model.safetensors", "pt") as fa, safe_open(b_dir / "model.safetensors", "pt") as fb:
        assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
        assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())

    # the loss history survived the kill: every step once, the same losses as the uninterrupted run
    assert _losses(b_dir) == _losses(a_dir) and sorted(_losses(a_dir)) == list(range(STEPS))

    # the wandb run continued: the same id, and both starts logged to it
    assert (b_dir / "wandb_run_id.txt").read_text().strip() == run_id
    runs = sorted(p.name for p in (b_dir / "wandb").glob("offline-run-*"))
    assert runs and all(name.endswith(f"-{run_id}") for name in runs)
    assert "resuming from" in (tmp_path / "b2.log").read_text()


def _video_dataset(toy: Path, buffer: int) -> Any:
    from vldm.data.shards import VideoClipDataset

    return VideoClipDataset(str(toy / "videos" / "train-*.tar"), num_frames=2, size=8, shuffle_buffer=buffer, seed=0)


def _take(dataset: Any, n: int) -> list[tuple[str, list[int]]]:
    return [(s["__key__"], s["__pos__"].tolist()) for _, s in zip(range(n), dataset)]


@pytest.mark.parametrize("buffer", [0, 8])
def test_stream_position_resumes_exactly_or_by_shard(toy_root: Path, buffer: int) -> None:
    stream = _take(_video_dataset(toy_root, buffer), 100)  # 48 clips a pass: passes 0, 1 and part of 2
    floors = []
    for cut in (20, 40, 70):
        reader, world, epoch, position, floor = stream[cut - 1][1]
        state = {"world": world, "workers": {reader: [epoch, position, floor]}}
        exact = _video_dataset(toy_root, buffer)
        exact.restore_position(state, "exact")
        assert [k for k, _ in _take(exact, 100 - cut)] == [k for k, _ in stream[cut:]]
        by_shard = _video_dataset(toy_root, buffer)
        by_shard.restore_position(state, "shard")
        rest = _take(by_shard, 100)
        same_pass = [k for k, p in rest if p[2] == epoch]
        trained = {k for k, p in stream[:cut] if p[2] == epoch}
        whole_pass = {k for k, p in stream if p[2] == epoch}
        assert whole_pass - trained <= set(same_pass) and len(same_pass) == len(set(same_pass))  # nothing lost
        assert len(same_pass) < len(whole_pass) if floor > 0 else set(same_pass) == whole_pass
        assert rest[len(same_pass)][1][2] == epoch + 1  # then the next pass as usual
        floors.append(floor)
    assert any(f > 0 for f in floors)  # finished shards were skipped unread at least once


def test_resume_with_another_number_of_readers_restarts_the_earliest_pass(toy_root: Path) -> None:
    dataset = _video_dataset(toy_root, 0)
    dataset.restore_position({"world": 4, "workers": {"0": [3, 5, 1], "1": [2, 9, 2]}}, "shard")
    first = _take(dataset, 1)[0][1]
    assert first[2] == 2 and first[3] == 0


def test_wandb_run_id_is_kept_only_for_a_resumed_run(tmp_path: Path) -> None:
    from vldm.training.run import wandb_run_id

    first = wandb_run_id(tmp_path, resuming=False)
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == first
    assert wandb_run_id(tmp_path, resuming=True) == first
    fresh = wandb_run_id(tmp_path, resuming=False)  # a new run in the same directory: a new wandb run
    assert fresh != first and wandb_run_id(tmp_path, resuming=True) == fresh


def test_auto_resume_takes_the_newest_of_last_and_the_slurm_handler_checkpoint(tmp_path: Path) -> None:
    from vldm.training.run import find_resume_checkpoint

    assert find_resume_checkpoint(tmp_path, "auto") is None
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"x")
    assert find_resume_checkpoint(tmp_path, "auto") == last
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert find_resume_checkpoint(tmp_path, "auto") == hpc
    os.utime(last, ns=(hpc.stat().st_mtime_ns,) * 2)  # the same write time: the requeue checkpoint
    assert find_resume_checkpoint(tmp_path, "auto") == hpc
    assert find_resume_checkpoint(tmp_path, "never") is None
