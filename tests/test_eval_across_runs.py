"""Evaluation across runs: one series per run directory, labelled with its run name, and the steps of a
run that started from another run's weights counted on from where that run's training had reached."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers.configs import compose_eval
from tests.helpers.evaluation import base_overrides
from vldm.evaluation.checkpoints import resolve_checkpoints
from vldm.evaluation.run import evaluate


def stage_dir(root: Path, stage: str, init_from: str | Path | None, step: int, video: bool = True) -> Path:
    """A stage run dir with only what resolution reads: config.yaml (with stage.init_from; a text-to-video
    model, or text-to-image when not ``video``), result.json, an (empty) model.safetensors."""
    d = root / stage
    d.mkdir(parents=True)
    model = {"diffusion": {"image_to_video": False, "network": {"video": video}}}
    OmegaConf.save(OmegaConf.create({"stage": {"name": stage, "kind": "diffusion", "init_from": init_from},
                                     "seed": 0, "model": model}), d / "config.yaml")
    (d / "result.json").write_text(json.dumps({"stage": stage, "global_step": step}))
    (d / "model.safetensors").write_bytes(b"")
    return d


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """runs/demo (image 150, video 380, hq 200 steps, a chain) and runs/real/hq (10 steps from demo/video)."""
    demo = tmp_path / "runs" / "demo"
    stage_dir(demo, "image", None, 150, video=False)
    stage_dir(demo, "video", demo / "image" / "model.safetensors", 380)
    stage_dir(demo, "hq", demo / "video" / "model.safetensors", 200)
    real = tmp_path / "runs" / "real"
    stage_dir(real, "hq", demo / "video" / "model.safetensors", 10)
    return demo, real


def test_a_run_started_from_another_runs_weights_counts_on_from_its_step(two_runs: tuple[Path, Path]) -> None:
    demo, real = two_runs
    refs = resolve_checkpoints([demo / "image", demo / "video", demo / "hq", real / "hq"], say=lambda _: None,
                               mode="t2v")
    assert [r.run for r in refs] == ["demo/image", "demo/video", "demo/hq", "real/hq"]
    assert [r.cumulative_step for r in refs] == [150, 530, 730, 540]  # real/hq: demo/video's 530, then 10
    assert [r.name for r in refs] == ["demo/image (inflated)", "demo/video", "demo/hq", "real/hq"]
    assert refs[3].init_run == demo / "video" and refs[3].init_step == 380
    assert refs[0].init_run is None and refs[0].offset == 0


def test_init_from_a_step_checkpoint_and_from_an_outside_file(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    demo, _ = two_runs
    (demo / "video" / "checkpoints").mkdir()
    other = tmp_path / "runs" / "branch"
    stage_dir(other, "hq", demo / "video" / "checkpoints" / "step=000190.ckpt", 5)
    said: list[str] = []
    (branch,) = resolve_checkpoints(other / "hq", say=said.append, mode="t2v")
    assert (branch.offset, branch.init_step, branch.cumulative_step) == (340, 190, 345)  # image 150 + video 190
    outside = tmp_path / "runs" / "ft"
    stage_dir(outside, "hq", tmp_path / "svd_xt.safetensors", 7)
    (ft,) = resolve_checkpoints(outside / "hq", say=said.append, mode="t2v")
    assert (ft.offset, ft.cumulative_step, ft.init_run) == (0, 7, None)
    assert any("ft/hq" in line and "svd_xt.safetensors" in line and "count from 0" in line for line in said)


def test_relative_init_from_resolves_against_the_training_root(tmp_path: Path) -> None:
    demo = tmp_path / "runs" / "demo"
    stage_dir(demo, "video", None, 100)
    d = stage_dir(demo, "hq", "./runs/demo/video/model.safetensors", 20)
    cfg = OmegaConf.load(d / "config.yaml")
    cfg.paths = {"output_dir": "./runs/demo/hq"}  # as `paths.root_dir=.` writes it
    OmegaConf.save(cfg, d / "config.yaml")
    (ref,) = resolve_checkpoints(d, mode="t2v")
    assert ref.init_run == demo / "video" and ref.cumulative_step == 120


def _result(run: str, run_dir: Path, step: int, value: float, init: Path | None = None, offset: int = 0) -> dict:
    return {"name": run, "run": run, "run_dir": str(run_dir), "stage": run.split("/")[1], "step": step - offset,
            "cumulative_step": step, "offset": offset, "init_run_dir": None if init is None else str(init),
            "metrics": {"frpd": {"value": value, "higher_is_better": False}}}


def test_plot_series_are_keyed_by_run_directory_and_labelled_with_the_run(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vldm.evaluation.outputs import _plot_metric, plot_series

    demo, real = tmp_path / "runs" / "demo", tmp_path / "runs" / "real"
    results = [_result("demo/video", demo / "video", 530, 0.3, demo / "image", 150),
               _result("demo/hq", demo / "hq", 730, 0.2, demo / "video", 530),
               _result("real/hq", real / "hq", 540, 0.25, demo / "video", 530)]
    series = plot_series(results, "frpd")
    assert [(s.label, s.xs) for s in series] == [("demo/video", [530.0]), ("demo/hq", [730.0]), ("real/hq", [540.0])]
    assert series[0].start is None  # demo/image is not plotted
    assert series[1].start == series[2].start == (530.0, 0.3)  # both branch from demo/video's point
    fig, ax = plt.subplots()
    try:
        assert _plot_metric(ax, results, "frpd")
        assert ax.get_legend_handles_labels()[1] == ["demo/video", "demo/hq", "real/hq"]
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_evaluating_a_run_started_from_the_smoke_chain(smoke_chain: Path, toy_root: Path, tmp_path: Path) -> None:
    """runs/real/hq: the smoke hq run copied to another run root (its config starts it from smoke/video)."""
    from vldm.evaluation.outputs import plot_series

    real = tmp_path / "runs" / "real" / "hq"
    shutil.copytree(smoke_chain / "hq", real)
    cfg = compose_eval(base_overrides(toy_root, tmp_path / "eval", tmp_path / "cache") + [
        f"checkpoints=[{smoke_chain}/video,{smoke_chain}/hq,{real}]", "mode=t2v", "sampler.num_steps=1",
        "data.num_videos=2"])
    results = evaluate(cfg)["results"]
    assert [r["run"] for r in results] == ["smoke/video", "smoke/hq", "real/hq"]
    assert [r["cumulative_step"] for r in results] == [8, 12, 12]  # real/hq: smoke/video's 8, then its 4
    assert results[2]["init_run_dir"] == str(smoke_chain / "video")
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert [(row["run"], row["cumulative_step"]) for row in rows] == [("smoke/video", "8"), ("smoke/hq", "12"),
                                                                      ("real/hq", "12")]
    assert [s.label for s in plot_series(results, "frpd")] == ["smoke/video", "smoke/hq", "real/hq"]


def test_a_run_started_from_its_own_export_counts_from_zero(tmp_path: Path) -> None:
    d = tmp_path / "runs" / "again" / "hq"
    stage_dir(d.parent, "hq", d / "model.safetensors", 30)
    said: list[str] = []
    (ref,) = resolve_checkpoints(d, say=said.append, mode="t2v")
    assert (ref.offset, ref.cumulative_step, ref.init_run) == (0, 30, None)
    assert any("leads back to again/hq" in line for line in said)
