"""sample.py on a text-to-video model: prompts in, clips + json out; its export; the inputs it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.repo import REPO
from tests.helpers.sampling import FAST, frames_of, make_run, sample

@pytest.fixture(scope="module")
def t2v_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "hq", metadata={"fps": "12"})


@pytest.fixture(scope="module")
def i2v_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "i2v", metadata={"fps": "12"})


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_a_t2v_run_samples_one_clip_per_prompt(smoke_chain: Path, tmp_path: Path) -> None:
    from vldm.io.video_io import read_video

    prompts = ["a red circle moving right", "a blue square moving left"]
    listed = "[" + ",".join(f"'{p}'" for p in prompts) + "]"
    written = sample(checkpoint=smoke_chain / "hq", prompt=listed, seed=4, save_frames=True,
                     output_dir=tmp_path / "batch", **FAST)
    assert [p.name.split("_seed")[0] for p in written] == ["a_red_circle_moving_right", "a_blue_square_moving_left"]
    assert [p.stem.split("_seed")[1].split("_")[0] for p in written] == ["4", "5"]
    for mp4 in written:
        assert mp4.with_suffix(".gif").is_file()
        frames, fps = read_video(mp4)
        assert frames.shape == (3, 32, 32, 3) and fps == pytest.approx(8)  # the toy clips' rate, from training
    meta = json.loads(written[1].with_suffix(".json").read_text())
    assert meta["prompt"] == prompts[1] and meta["seed"] == 5 and meta["task"] == "text_to_video"
    assert (meta["fps"], meta["fps_id"], meta["motion_bucket_id"], meta["num_frames"]) == (8, 7, 127, 3)
    assert (meta["height"], meta["width"]) == (32, 32) and "cond_aug" not in meta
    assert meta["sampler"]["num_steps"] == 2
    assert meta["sampler"]["min_guidance"] == meta["sampler"]["max_guidance"] == 2.0  # the t2v preset: constant
    assert meta["dtype"] == "torch.float32" and meta["device"] == "cpu"
    assert meta["memory_plan"]["cfg_mode"] == "batched" and "peak_memory_bytes" in meta and meta["seconds"] > 0
    # prompt i alone with seed + i: the same clip as in the batch run
    [alone] = sample(checkpoint=smoke_chain / "hq", prompt=f"'{prompts[1]}'", seed=5, save_frames=True,
                     output_dir=tmp_path / "alone", **FAST)
    assert alone.name == written[1].name
    assert np.array_equal(frames_of(alone), frames_of(written[1]))
    assert not np.array_equal(frames_of(written[0]), frames_of(written[1]))


def test_a_prompts_file_gives_one_clip_per_line(t2v_run: Path, tmp_path: Path) -> None:
    listing = tmp_path / "prompts.txt"
    listing.write_text("# toy captions\na red circle moving right\n\n   \na blue square moving left\n")
    written = sample(checkpoint=t2v_run, prompts=listing, output_dir=tmp_path / "out", **FAST)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in written]
    assert [m["prompt"] for m in metas] == ["a red circle moving right", "a blue square moving left"]
    assert [m["seed"] for m in metas] == [0, 1] and all(m["fps"] == 12 for m in metas)


def test_the_settings_hash_covers_prompt_settings_and_sampler(t2v_run: Path, tmp_path: Path) -> None:
    common = {"checkpoint": t2v_run, "output_dir": tmp_path, "num_frames": 2, "sampler.num_steps": 1}
    [base] = sample(prompt="'a red circle'", **common)
    [other_prompt] = sample(prompt="'a red circle!'", **common)  # the same slug, another prompt
    [bucket] = sample(prompt="'a red circle'", motion_bucket_id=30, **common)
    [guidance] = sample(prompt="'a red circle'", **{**common, "sampler.min_guidance": 1.0, "sampler.max_guidance": 3.0})
    assert len({base, other_prompt, bucket, guidance}) == 4
    assert base.name.split("_seed")[0] == other_prompt.name.split("_seed")[0] == "a_red_circle"
    sampler = json.loads(guidance.with_suffix(".json").read_text())["sampler"]
    assert (sampler["min_guidance"], sampler["max_guidance"]) == (1.0, 3.0)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample(prompt="'a red circle'", **common)


def test_the_t2v_memory_plan_has_no_conditioning_frame_encoder(t2v_run: Path) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.sampling.components import components
    from vldm.sampling.lean import lean_sampler
    from vldm.sampling.memory_stats import ModelMemoryStats

    model, _ = load_run(t2v_run)
    parts = components(model)
    assert parts.cond_frame_encoders == [] and parts.cond_frame_embedders == []
    assert [type(e).__name__ for e in parts.image_encoders] == ["OpenCLIPTextEmbedder"]
    assert any(m is model.first_stage_model.encoder for m in parts.unused)  # the VAE encoder never runs
    stats = ModelMemoryStats.from_module(model)
    assert stats.params["cond_frame_encoder"] == 0 and stats.encoder_layers == []
    cfg = SamplerConfig(num_steps=1, min_guidance=2.0, max_guidance=2.0)
    sampler, plan = lean_sampler(model, torch.device("cpu"), torch.float32, None, 3, 32, 32, cfg)
    assert plan.cfg_mode == "batched" and plan.estimates["conditioning"] < plan.estimates["denoising"]
    video = sampler.text_to_video(["a red circle"], 3, 32, 32, cfg=cfg, seed=1)
    assert video.shape == (1, 3, 3, 32, 32)


def test_t2v_inputs_that_do_not_fit_are_refused(t2v_run: Path, image_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"text-to-video model: it takes prompt=\.\.\. or prompts=FILE, not image"):
        sample(checkpoint=t2v_run, image=image_file, output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"text-to-video model: give prompt=.* or prompts=FILE"):
        sample(checkpoint=t2v_run, output_dir=tmp_path)
    with pytest.raises(ValueError, match="cond_aug=0.02 is the noise on an image-to-video.*drop cond_aug"):
        sample(checkpoint=t2v_run, prompt="x", cond_aug=0.02, output_dir=tmp_path)
    listing = tmp_path / "p.txt"
    listing.write_text("a red circle\n")
    with pytest.raises(ValueError, match="both prompt=.* and prompts=.*give one"):
        sample(checkpoint=t2v_run, prompt="x", prompts=listing, output_dir=tmp_path)
    assert not list(tmp_path.glob("*.json"))


def test_prompts_files_that_hold_no_prompt_are_refused_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.txt"
    with pytest.raises(FileNotFoundError, match="prompts file .*nothing.txt does not exist"):
        sample(checkpoint=tmp_path / "no_run", prompts=missing, output_dir=tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n# only a comment\n")
    with pytest.raises(ValueError, match="blank.txt holds no prompt"):
        sample(checkpoint=tmp_path / "no_run", prompts=blank, output_dir=tmp_path)
    blank.write_text("")
    with pytest.raises(ValueError, match="blank.txt holds no prompt"):
        sample(checkpoint=tmp_path / "no_run", prompts=blank, output_dir=tmp_path)


def test_an_i2v_run_given_a_prompt_asks_for_an_image(i2v_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"image-to-video model: it takes image=\.\.\., not prompt"):
        sample(checkpoint=i2v_run, prompt="'a red circle'", output_dir=tmp_path)
    listing = tmp_path / "p.txt"
    listing.write_text("a red circle\n")
    with pytest.raises(ValueError, match=r"image-to-video model: it takes image=\.\.\., not prompt"):
        sample(checkpoint=i2v_run, prompts=listing, output_dir=tmp_path)


def test_an_exported_t2v_run_samples_from_a_prompt(t2v_run: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "vldm.jobs.export", str(t2v_run), str(tmp_path / "t2v.safetensors"),
                          "--dtype", "fp32"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    exported = tmp_path / "t2v.safetensors"
    assert (tmp_path / "t2v.yaml").is_file()
    common = {"prompt": "'a red circle'", "seed": 2, "save_frames": True, **FAST}
    [from_run] = sample(checkpoint=t2v_run, output_dir=tmp_path / "run", **common)
    [from_file] = sample(checkpoint=exported, output_dir=tmp_path / "file", **common)
    assert np.array_equal(frames_of(from_file), frames_of(from_run))  # fp32: the same weights, the same clip
    meta = json.loads(from_file.with_suffix(".json").read_text())
    assert meta["model"] == "vldm export" and meta["fps"] == 12 and meta["prompt"] == "a red circle"
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="text-to-video model: it takes prompt"):
        sample(checkpoint=exported, image=tmp_path / "x.png", output_dir=tmp_path)


def test_a_t2v_model_config_with_its_weights_file_samples(t2v_run: Path, tmp_path: Path) -> None:
    common = {"model": "toy_video", "checkpoint": t2v_run / "model.safetensors", "prompt": "'a red circle'",
              "output_dir": tmp_path, "sampler.num_steps": 1}
    with pytest.raises(ValueError, match="height=... width=... num_frames=..."):
        sample(**common)
    [mp4] = sample(height=32, width=32, num_frames=2, fps=9, **common)
    meta = json.loads(mp4.with_suffix(".json").read_text())
    assert (meta["fps"], meta["fps_id"], meta["num_frames"]) == (9, 8, 2) and mp4.name.startswith("a_red_circle_seed0_")
