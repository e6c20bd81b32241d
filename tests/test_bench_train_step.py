"""``bench/train_step.py`` at toy size: both parts run, the two UNets compute the same loss, the JSON is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # main() sets one thread on cpu


@pytest.mark.slow
def test_train_step_benchmark_runs_both_parts(tmp_path: Path, one_thread) -> None:
    from bench.train_step import main

    out = tmp_path / "train_step-cpu.json"
    report = main(["--size", "tiny", "--rounds", "2", "--steps", "1", "--warmup", "1", "--clips", "16",
                   "--no-memory", "--out", str(out)])
    assert json.loads(out.read_text()).keys() >= {"unet", "latent", "environment", "settings"}
    unet = report["unet"]
    assert unet["loss_rel_diff"] < 1e-5  # same weights, batch and preconditioning: the same computation
    assert unet["params"] > 1e6 and unet["speed_ratio"] > 0
    for tool in ("vldm", "diffusers"):
        assert len(unet["tools"][tool]["rounds_s"]) == 2 and unet["tools"][tool]["samples_per_s"] > 0
    latent = report["latent"]
    assert latent["cached_clips"] == 16 and latent["speedup"] > 0
    assert 1.0 < latent["flops"]["ceiling"] < 2.0  # the encoders removed are a fraction of the step
    for case in ("video", "latent"):
        assert latent["cases"][case]["steps_per_s"] > 0
    # the latent pipeline spends less time on data than the mp4 pipeline (no decoding)
    assert latent["cases"]["latent"]["data_s_per_step_mean"] < latent["cases"]["video"]["data_s_per_step_mean"]


def test_train_step_memory_worker_measures_a_peak(tmp_path: Path, one_thread) -> None:
    from bench.train_step import main

    result = main(["--worker", "vldm", "--size", "tiny", "--result", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == result
    assert result["baseline_bytes"] > 50 * 2**20  # torch and the model are resident
    # the kernel's RSS counters are per-CPU approximations: a flat resident set can read a little lower later
    assert result["peak_bytes"] >= result["baseline_bytes"] - 16 * 2**20
