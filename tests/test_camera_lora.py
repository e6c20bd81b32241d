"""Camera-motion LoRAs on the toy image-to-video model: the recipe (experiment=toy_camera_lora) and its check
(vldm.jobs.camera_lora_check)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf.errors import InterpolationToMissingValueError

from tests.helpers.configs import compose_train
from tests.helpers.shards import tar_samples
from vldm.evaluation.camera_motion import CameraMotionReading, camera_motion_accuracy
from vldm.io.video_io import read_video
from vldm.jobs.camera_lora_check import (MOTIONS, along_axis, lora_files, main, run_camera_lora_check,
                                         score_motion)
from vldm.jobs.toy_data import write_camera_dataset


@pytest.fixture(scope="module")
def camera_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy_camera")
    write_camera_dataset(root, num_train=20, num_val=10, samples_per_shard=16)
    return root


def test_the_recipe_trains_a_temporal_attention_lora_per_motion_on_the_demo_i2v_model() -> None:
    cfg = compose_train(["experiment=toy_camera_lora", "motion=zoom_in", "paths.root_dir=/r"])
    assert cfg.paths.output_dir == "/r/runs/demo/camera_lora/zoom_in"
    assert cfg.stage.init_from == "/r/runs/demo/i2v" and cfg.stage.init_mode == "full"
    assert cfg.stage.adapter.targets == "temporal_attention" and cfg.stage.adapter.kind == "lora"
    assert cfg.model.diffusion.image_to_video is True and cfg.model.diffusion.network.in_channels == 8
    assert cfg.data.train_shards == "/r/data/toy_camera/videos/train-*.tar"
    assert dict(cfg.data.filter) == {"camera": "zoom_in"} and cfg.data.num_frames == 6
    with pytest.raises(InterpolationToMissingValueError, match="Missing mandatory value: motion"):
        str(compose_train(["experiment=toy_camera_lora"]).stage.name)


def test_the_flow_reading_knows_the_real_camera_clips_at_the_models_length(camera_root: Path) -> None:
    """The check reads 6-frame clips: the first 6 frames of every written clip are read as their motion."""
    videos, labels = [], []
    for samples in tar_samples(camera_root / "videos").values():
        for sample in samples.values():
            videos.append(read_video(sample["mp4"])[0][:6])
            labels.append(json.loads(sample["json"])["camera"])
    assert len(videos) == 30
    assert camera_motion_accuracy(videos, labels)["accuracy"] >= 0.95


def _reading(pan: float = 0.0, zoom: float = 0.0, motion: str = "static") -> CameraMotionReading:
    return CameraMotionReading(pan=pan, zoom=zoom, magnitude=abs(pan) + abs(zoom), motion=motion)


def test_a_loras_row_counts_matches_and_signs_the_motion_along_its_axis() -> None:
    assert along_axis(_reading(pan=-1.5), "pan_right") == 1.5 and along_axis(_reading(zoom=-0.02), "zoom_out") == 0.02
    with pytest.raises(ValueError, match="pan_left, pan_right, zoom_in, zoom_out"):
        along_axis(_reading(), "static")
    base = [_reading(), _reading(pan=0.5, motion="pan_left")]
    half = [_reading(pan=0.6, motion="pan_left"), _reading(pan=0.8, motion="pan_left")]
    full = [_reading(pan=1.8, motion="pan_left"), _reading(pan=0.1, zoom=0.06, motion="zoom_in")]
    row = score_motion("pan_left", base, half, full)
    assert (row.match, row.base_match) == (0.5, 0.5)
    assert (row.magnitude_base, row.magnitude_half, row.magnitude_full) == pytest.approx((0.25, 0.7, 0.95))
    assert row.monotone and row.confusion == {"pan_left": 1, "zoom_in": 1}
    assert not score_motion("pan_left", half, base, full).monotone
    with pytest.raises(ValueError, match="as many"):
        score_motion("pan_left", base, half, full[:1])


def test_missing_loras_are_named_with_the_command_that_trains_them(tmp_path: Path) -> None:
    (tmp_path / "pan_left").mkdir()
    (tmp_path / "pan_left" / "lora.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="pan_right/lora.safetensors.*experiment=toy_camera_lora"):
        lora_files(tmp_path)


def test_a_camera_lora_trains_on_the_smoke_i2v_model_and_the_check_scores_it(smoke_chain: Path, camera_root: Path,
                                                                            tmp_path: Path) -> None:
    from vldm.adapters.lora_file import read_lora
    from vldm.checkpoints.load import load_run
    from vldm.training.run import train_stage

    cfg = compose_train(["experiment=toy_camera_lora", "motion=pan_left", f"paths.root_dir={tmp_path}",
                         f"paths.camera_dir={camera_root}", f"stage.init_from={smoke_chain / 'i2v'}",
                         "stage.max_steps=2", "stage.checkpoint_every=2", "stage.val_every=1000", "data.batch_size=2",
                         "trainer.enable_progress_bar=false", "logger.wandb.enabled=false"])
    result = train_stage(cfg)
    assert result.run_dir == tmp_path / "runs" / "demo" / "camera_lora" / "pan_left" and result.global_step == 2
    base, _ = load_run(smoke_chain / "i2v")
    lora = read_lora(result.weights, base.network)
    assert json.loads(lora.metadata["vldm_lora_spec"])["targets"] == ["temporal_attention"]
    assert set(lora.ranks.values()) == {8}
    loras = tmp_path / "loras"
    for motion in MOTIONS:  # the one trained LoRA stands in for all four
        (loras / motion).mkdir(parents=True)
        shutil.copy(result.weights, loras / motion / "lora.safetensors")
    report = run_camera_lora_check(smoke_chain / "i2v", loras, camera_root, num_clips=3, steps=2)
    assert report.num_clips == 3 and [r.motion for r in report.rows] == list(MOTIONS)
    pan_left, pan_right = report.rows[0], report.rows[1]
    # the same clips read along opposite axes: the pan rows' magnitudes are each other's negatives
    assert pan_left.magnitude_full == pytest.approx(-pan_right.magnitude_full)
    assert pan_left.magnitude_base == pytest.approx(-pan_right.magnitude_base)
    assert sum(pan_left.confusion.values()) == 3 and 0.0 <= report.match <= 1.0
    out = tmp_path / "report.json"
    main(["--base", str(smoke_chain / "i2v"), "--loras", str(loras), "--data", str(camera_root), "--num-clips", "2",
          "--steps", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["num_clips"] == 2 and len(written["rows"]) == 4 and isinstance(written["passed"], bool)


def test_the_check_refuses_a_text_to_video_base(smoke_chain: Path, camera_root: Path, tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    for motion in MOTIONS:
        (loras / motion).mkdir(parents=True)
        (loras / motion / "lora.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="text-to-video model: camera LoRAs sit on an image-to-video"):
        run_camera_lora_check(smoke_chain / "hq", loras, camera_root)
