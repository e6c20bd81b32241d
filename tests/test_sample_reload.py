"""sample.py on exported files, non-square runs, trained fps presets, output names, and stage-I text-to-image."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.repo import REPO
from tests.helpers.sampling import FAST, frames_of, make_run, sample
from vldm.checkpoints.svd_export import export_svd
from vldm.io.safe_load import CheckpointError

@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "i2v", metadata={"fps": "12"})


def test_exported_file_samples_as_its_run(video_run: Path, image_file: Path, tmp_path: Path) -> None:
    exported = export_svd(video_run, tmp_path / "export" / "toy.safetensors").weights
    common = {"image": image_file, "seed": 3, "save_frames": True, **FAST}
    [from_run] = sample(checkpoint=video_run, output_dir=tmp_path / "run", **common)
    [from_file] = sample(checkpoint=exported, output_dir=tmp_path / "file", **common)
    a, b = frames_of(from_run), frames_of(from_file)
    assert a.shape == b.shape == (3, 32, 32, 3)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05  # fp16 weights: rounding only
    fp32 = export_svd(video_run, tmp_path / "export" / "toy_fp32.safetensors", dtype=torch.float32).weights
    [from_fp32] = sample(checkpoint=fp32, output_dir=tmp_path / "fp32", **common)
    assert np.array_equal(frames_of(from_fp32), a)  # the same weights: the same clip
    meta_run, meta_file = (json.loads(p.with_suffix(".json").read_text()) for p in (from_run, from_file))
    keys = ("height", "width", "num_frames", "fps", "fps_id", "motion_bucket_id", "cond_aug", "seed")
    assert {k: meta_run[k] for k in keys} == {k: meta_file[k] for k in keys}
    assert meta_file["fps"] == 12 and meta_file["model"] == "vldm export"


def test_sample_py_reloads_an_exported_file(video_run: Path, image_file: Path, tmp_path: Path) -> None:
    exported = export_svd(video_run, tmp_path / "toy.safetensors").weights
    out = subprocess.run([sys.executable, "sample.py", f"checkpoint={exported}", f"image={image_file}",
                          f"output_dir={tmp_path / 'out'}", "sampler.num_steps=1", "num_frames=2"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    [mp4] = (tmp_path / "out").glob("frame_seed0_*.mp4")
    assert json.loads(mp4.with_suffix(".json").read_text())["num_frames"] == 2


def test_another_model_config_on_an_exported_file_says_what_the_file_is(video_run: Path, image_file: Path,
                                                                          tmp_path: Path) -> None:
    exported = export_svd(video_run, tmp_path / "toy.safetensors").weights
    with pytest.raises(CheckpointError) as err:
        sample(model="svd", checkpoint=exported, image=image_file, output_dir=tmp_path)
    message = str(err.value)
    assert "exported by vldm" in message and "model_channels=32" in message and "model_channels=320" in message
    assert "drop model=..." in message and "missing keys" not in message


def test_a_run_trained_at_a_non_square_size_samples_at_it(tmp_path: Path, image_file: Path) -> None:
    run = make_run(tmp_path, "i2v", "data.size=[32,64]", metadata={"fps": "8"})
    [mp4] = sample(checkpoint=run, image=image_file, output_dir=tmp_path / "out", save_frames=True, **FAST)
    meta = json.loads(mp4.with_suffix(".json").read_text())
    assert (meta["height"], meta["width"]) == (32, 64)
    assert frames_of(mp4).shape == (3, 32, 64, 3)
    exported = export_svd(run, tmp_path / "wide.safetensors").weights
    [again] = sample(checkpoint=exported, image=image_file, output_dir=tmp_path / "out2", **FAST)
    assert (json.loads(again.with_suffix(".json").read_text())["width"]) == 64


def test_the_fps_preset_is_the_rate_the_run_trained_at(tmp_path: Path, image_file: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    varied = make_run(tmp_path / "a", "i2v", metadata={"fps": json.dumps({"8": 3, "16": 5, "4": 5})})
    [mp4] = sample(checkpoint=varied, image=image_file, output_dir=tmp_path / "out", **FAST)
    meta = json.loads(mp4.with_suffix(".json").read_text())
    assert (meta["fps"], meta["fps_id"]) == (4, 3)  # the most frequent; a tie goes to the lower rate
    [chosen] = sample(checkpoint=varied, image=image_file, output_dir=tmp_path / "out", fps=10, **FAST)
    assert json.loads(chosen.with_suffix(".json").read_text())["fps"] == 10
    unrecorded = make_run(tmp_path / "b", "i2v")
    with caplog.at_level(logging.WARNING):
        [mp4] = sample(checkpoint=unrecorded, image=image_file, output_dir=tmp_path / "out", **FAST)
    assert json.loads(mp4.with_suffix(".json").read_text())["fps"] == 7
    assert "does not record the frame rate" in caplog.text


def test_outputs_of_other_settings_do_not_overwrite_each_other(video_run: Path, image_file: Path,
                                                               tmp_path: Path) -> None:
    common = {"checkpoint": video_run, "image": image_file, "output_dir": tmp_path, "num_frames": 3}
    [two] = sample(**common, **{"sampler.num_steps": 2})
    [one] = sample(**common, **{"sampler.num_steps": 1})
    [bucket] = sample(**common, **{"sampler.num_steps": 1, "motion_bucket_id": 30})
    assert len({two, one, bucket}) == 3 and all(p.is_file() for p in (two, one, bucket))
    assert json.loads(two.with_suffix(".json").read_text())["sampler"]["num_steps"] == 2
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample(**common, **{"sampler.num_steps": 2})
    assert sample(**common, overwrite=True, **{"sampler.num_steps": 2}) == [two]


def test_a_stage_one_run_samples_images_from_a_prompt(tmp_path: Path, image_file: Path) -> None:
    run = make_run(tmp_path, "image")
    [png] = sample(checkpoint=run, prompt="'a red square'", output_dir=tmp_path / "out",
                   **{"sampler.num_steps": 2})
    assert png.name.startswith("a_red_square_seed0_") and png.suffix == ".png"
    assert Image.open(png).size == (32, 32)
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["prompt"] == "a red square" and meta["sampler"]["num_steps"] == 2
    with pytest.raises(ValueError, match="text-to-image model: it takes prompt"):
        sample(checkpoint=run, image=image_file, output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"text-to-image model: give prompt"):
        sample(checkpoint=run, output_dir=tmp_path)


def test_an_image_to_video_run_asks_for_an_image(video_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image-to-video model: give image=PATH"):
        sample(checkpoint=video_run, output_dir=tmp_path)
    with pytest.raises(ValueError, match="not prompt"):
        sample(checkpoint=video_run, prompt="x", output_dir=tmp_path)


def test_the_recorded_fps_reads_back_as_the_preset() -> None:
    from vldm.checkpoints.export import fps_record
    from vldm.sampling.presets import trained_fps

    assert fps_record({8: 40}) == "8" and trained_fps({"fps": fps_record({8: 40})}) == 8
    assert trained_fps({"fps": fps_record({4: 10, 8: 30, 16: 2})}) == 8
    assert trained_fps({}) is None
    with pytest.raises(ValueError, match="no training clips"):
        fps_record({})


def test_the_export_module_points_at_the_export_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "vldm.checkpoints.svd_export", str(tmp_path), "out.safetensors"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and "python -m vldm.jobs.export RUN_DIR OUT.safetensors" in out.stderr
