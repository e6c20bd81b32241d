"""What a run refuses before it trains, and what it says when there is nothing to train: a resume
under a changed config or from another stage, a key appended where nothing reads it, and a stage
already at its last step."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.configs import compose_train
from tests.helpers.repo import REPO
from tests.helpers.smoke import smoke


def _copy_run(smoke_chain: Path, tmp_path: Path, stage: str) -> Path:
    """The smoke chain copied to ``tmp_path/runs/smoke`` (the chain itself stays untouched); its ``stage`` run."""
    shutil.copytree(smoke_chain, tmp_path / "runs" / "smoke")
    return tmp_path / "runs" / "smoke" / stage


@pytest.mark.slow
def test_resuming_another_stages_checkpoint_is_refused(tmp_path: Path, toy_root: Path, smoke_chain: Path) -> None:
    from vldm.training.run import train_stage

    video_ckpt = _copy_run(smoke_chain, tmp_path, "video") / "checkpoints" / "last.ckpt"
    shutil.rmtree(tmp_path / "runs" / "smoke" / "hq")
    cfg = smoke(tmp_path, toy_root, "hq", f"resume={video_ckpt}", "stage.max_steps=2")
    with pytest.raises(ValueError, match=r"stage\.name: 'video' -> 'hq'"):  # a ResumeConfigMismatch
        train_stage(cfg)
    assert not (tmp_path / "runs" / "smoke" / "hq").exists()  # nothing written, nothing exported


@pytest.mark.slow
def test_rerun_with_other_data_is_refused_and_keeps_the_stored_config(tmp_path: Path, toy_root: Path,
                                                                      smoke_chain: Path) -> None:
    from vldm.training.run import train_stage

    run = _copy_run(smoke_chain, tmp_path, "video")
    stored = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"data\.clip_start: 'first' -> 'random'(.|\n)*resume=force"):
        train_stage(smoke(tmp_path, toy_root, "video", "data.clip_start=random"))
    assert (run / "config.yaml").read_text() == stored


@pytest.mark.slow
def test_a_finished_run_trains_nothing_and_says_so(tmp_path: Path, toy_root: Path, smoke_chain: Path) -> None:
    from vldm.training.run import train_stage

    run = _copy_run(smoke_chain, tmp_path, "image")
    weights = (run / "model.safetensors").stat().st_mtime_ns
    result = train_stage(smoke(tmp_path, toy_root, "image"))
    assert (run / "model.safetensors").stat().st_mtime_ns == weights  # the stage's weights are not rewritten
    assert (result.global_step, result.trained_steps) == (4, 0)


@pytest.mark.slow
def test_resume_force_accepts_a_changed_config(tmp_path: Path, toy_root: Path, smoke_chain: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from vldm.training.run import train_stage

    run = _copy_run(smoke_chain, tmp_path, "image")
    with caplog.at_level(logging.INFO):
        result = train_stage(smoke(tmp_path, toy_root, "image", "resume=force", "seed=1", "stage.max_steps=5"))
    assert (result.global_step, result.trained_steps) == (5, 1)
    assert "seed: 1" in (run / "config.yaml").read_text()
    # Lightning restored the checkpoint with torch.load(weights_only=True), not its unsafe default
    assert "resuming from" in caplog.text and "`weights_only` was not set" not in caplog.text


def test_short_runs_log_every_step(smoke_chain: Path) -> None:
    with (smoke_chain / "image" / "logs" / "metrics.csv").open(newline="") as file:
        steps = [int(r["step"]) for r in csv.DictReader(file) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]


def test_an_appended_key_nothing_reads_is_refused_with_the_close_match() -> None:
    from vldm.utils.config_check import ConfigError, refuse_appended_keys

    cfg = compose_train(["stage=image", "+stage.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"did you mean stage\.max_steps\?"):
        refuse_appended_keys(cfg, ["+stage.max_stepz=3"])
    with pytest.raises(ConfigError, match="the top level"):
        refuse_appended_keys(compose_train(["+sedd=3"]), ["+sedd=3"])
    # read by an instantiated node (its target checks the argument), a config group, or Hydra's own
    refuse_appended_keys(compose_train(["+data.resume_mode=exact"]), ["+data.resume_mode=exact"])
    refuse_appended_keys(cfg, ["+experiment=smoke", "++stage.max_steps=3", "+hydra.job.env_set.X=1"])


def test_config_mistakes_are_reported_before_torch_is_imported() -> None:
    """``train.py +stage.max_stepz=3`` and ``--help`` never import torch (what made them take 15-20 s)."""
    for args, status in ((["+stage.max_stepz=3"], 2), (["--help"], 0)):
        done = subprocess.run([sys.executable, "-X", "importtime", "train.py", *args], cwd=REPO,
                              capture_output=True, text=True)
        assert done.returncode == status, done.stdout[-2000:] + done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
        assert "hydra" in imported and "torch" not in imported and "pytorch_lightning" not in imported
    refused = subprocess.run([sys.executable, "train.py", "+stage.max_stepz=3"], cwd=REPO, capture_output=True,
                             text=True)
    assert "+stage.max_stepz: nothing reads 'max_stepz' in stage; did you mean stage.max_steps?" in (
        refused.stdout + refused.stderr)


def test_the_toy_preset_on_real_data_is_pointed_out(caplog: pytest.LogCaptureFixture) -> None:
    """``stage=video data=webdataset`` keeps the toy model of the stage's toy preset: the run says so."""
    from vldm.training.launch import describe_run, preflight

    cfg = compose_train(["stage=video", "data=webdataset", "data.train_shards=/clips", "data.num_workers=512"])
    choices = {"toy_stage": "video", "model": "toy_video", "data": "webdataset"}
    with caplog.at_level("WARNING", logger="train"):
        preflight(cfg, choices, [])
    text = caplog.text
    assert "toy preset (toy_stage=video: model=toy_video) on data=webdataset at size [576, 1024]" in text
    assert "data.num_workers=512 loader processes" in text
    assert "size [576, 1024] x 14 frames, batch 1, 512 loader workers" in describe_run(cfg, choices)
    caplog.clear()
    with caplog.at_level("WARNING", logger="train"):
        preflight(compose_train(["stage=video"]), {"toy_stage": "video", "data": "toy_videos"}, [])
    assert caplog.text == ""
