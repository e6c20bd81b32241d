"""Camera-motion toy clips (vldm.data.toy_camera), their shards, the flow classifier that reads them
(vldm.evaluation.camera_motion), and the light palette of the moving-shape toy data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.shards import tar_samples
from vldm.data.toy import LIGHT_BACKGROUNDS, WARM_BACKGROUNDS, generate_clip
from vldm.data.toy_camera import CAMERA_MOTIONS, generate_camera_clip
from vldm.evaluation.camera_motion import camera_motion_accuracy, read_camera_motion
from vldm.io.video_io import read_video
from vldm.jobs.toy_data import main, write_camera_dataset, write_toy_dataset


def test_written_camera_clips_are_labelled_and_classified_from_flow(tmp_path: Path) -> None:
    """The decoded mp4 clips of the shards: >= 95% read as the motion their json names."""
    root = tmp_path / "toy_camera"
    manifest = write_camera_dataset(root, num_train=40, num_val=10, samples_per_shard=16)
    assert manifest["counts"]["videos/train"] == {m: 8 for m in CAMERA_MOTIONS}
    videos, labels = [], []
    for samples in tar_samples(root / "videos").values():
        for sample in samples.values():
            meta = json.loads(sample["json"])
            assert meta["caption"].startswith("the camera ") and meta["camera"] in CAMERA_MOTIONS
            frames, fps = read_video(sample["mp4"])
            assert frames.shape == (8, 32, 32, 3) and fps == pytest.approx(8)
            videos.append(frames)
            labels.append(meta["camera"])
    assert len(videos) == 50 and Counter(labels) == {m: 10 for m in CAMERA_MOTIONS}
    result = camera_motion_accuracy(videos, labels)
    assert result["accuracy"] >= 0.95, result["confusion"]
    again = write_camera_dataset(root, num_train=40, num_val=10, samples_per_shard=16)
    assert again["seconds"] == manifest["seconds"]  # an up-to-date dataset is not rewritten


def test_the_flow_readings_have_the_documented_signs() -> None:
    readings = {m: read_camera_motion(generate_camera_clip(5, m)[0]) for m in CAMERA_MOTIONS}
    assert readings["pan_left"].pan > 0.8 and readings["pan_right"].pan < -0.8  # content moves right / left
    assert readings["zoom_in"].zoom > 0.02 and readings["zoom_out"].zoom < -0.02
    assert readings["static"].magnitude < 0.01
    assert {m: r.motion for m, r in readings.items()} == {m: m for m in CAMERA_MOTIONS}
    frames, meta = generate_camera_clip(5, "static")
    assert (frames == frames[:1]).all() and meta["motion_bucket_id"] == 0
    assert np.array_equal(generate_camera_clip(5, "zoom_in")[0], generate_camera_clip(5, "zoom_in")[0])


def test_bad_camera_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="camera motion must be one of"):
        generate_camera_clip(0, "tilt_up")
    with pytest.raises(ValueError, match="at least 2 frames"):
        read_camera_motion(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="too small for a margin"):
        read_camera_motion(np.zeros((3, 6, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="as many labels as videos"):
        camera_motion_accuracy([np.zeros((2, 32, 32, 3), np.uint8)], [])
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path / "c"), "--camera", "--palette", "light"])


def test_the_camera_cli_writes_its_own_folder(tmp_path: Path, capsys) -> None:
    manifest = main(["--root", str(tmp_path / "toy_camera"), "--camera", "--num-train", "5", "--num-val", "0"])
    assert manifest["totals"] == {"videos/train": 5, "videos/val": 0}
    assert "videos/train: 5 samples in 1 shard(s)" in capsys.readouterr().out


def test_the_light_palette_keeps_the_scene_and_changes_the_background() -> None:
    for seed in range(6):
        dark, dark_meta = generate_clip(seed, "clean")
        light, light_meta = generate_clip(seed, "clean", palette="light")
        assert light_meta["background"] in LIGHT_BACKGROUNDS
        same = ("shape", "colour", "speed", "direction", "start")
        assert {k: light_meta[k] for k in same} == {k: dark_meta[k] for k in same}
        assert light.mean() > dark.mean() + 60
        warm_meta = generate_clip(seed, "clean", palette="warm")[1]
        assert warm_meta["background"] in WARM_BACKGROUNDS and warm_meta["colour"] == dark_meta["colour"]
    with pytest.raises(ValueError, match="palette must be one of"):
        generate_clip(0, "clean", palette="neon")


def test_a_default_dataset_request_does_not_name_a_palette(tmp_path: Path) -> None:
    dark = write_toy_dataset(tmp_path / "dark", num_train=4, num_val=1, reject_fraction=0.0)
    light = write_toy_dataset(tmp_path / "light", num_train=4, num_val=1, reject_fraction=0.0, palette="light")
    assert "palette" not in dark["request"] and light["request"]["palette"] == "light"
    with pytest.raises(ValueError, match="palette must be one of"):
        write_toy_dataset(tmp_path / "bad", num_train=4, palette="neon")
