"""Sampling: shapes, determinism by seed, sample.py outputs and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.configs import compose
from vldm.sampling.pipeline import LatentDiffusionSampler
from vldm.sampling.images import list_images, load_image


def sample_cfg(**overrides):
    return compose("sample", [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def video_run(smoke_chain: Path) -> Path:
    """The session's smoke chain: autoencoder, image, video and hq (text-to-video), i2v (image-to-video)."""
    return smoke_chain


@pytest.mark.slow
def test_sampler_shapes_and_determinism_by_seed(video_run: Path) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.diffusion.sampler_config import SamplerConfig

    module, _ = load_run(video_run / "i2v")
    sampler = LatentDiffusionSampler.from_model(module)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    cfg = SamplerConfig(num_steps=3, sigma_max=80.0)
    a = sampler.image_to_video(image, 5, cfg=cfg, seed=1)
    b = sampler.image_to_video(image, 5, cfg=cfg, seed=1)
    c = sampler.image_to_video(image, 5, cfg=cfg, seed=2)
    assert a.shape == (2, 5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    for name in ("heun", "dpmpp_2m"):
        out = sampler.image_to_video(image[:1], 4, cfg=SamplerConfig(name=name, num_steps=2, sigma_max=80.0))
        assert out.shape == (1, 4, 3, 32, 32) and torch.isfinite(out).all()
    # one seed per image: video i is what image i alone with seed i gives, whatever the batch
    batched = sampler.image_to_video(image, 5, cfg=cfg, seed=[7, 9])
    alone = [sampler.image_to_video(image[i:i + 1], 5, cfg=cfg, seed=s)[0] for i, s in enumerate((7, 9))]
    assert (batched[0] - alone[0]).abs().max() < 1e-5 and (batched[1] - alone[1]).abs().max() < 1e-5
    assert not torch.allclose(batched[0], batched[1])
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        sampler.image_to_video(image, 5, cfg=cfg, seed=[1, 2, 3])


@pytest.mark.slow
def test_guidance_one_skips_the_unconditional_pass(video_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.diffusion.sampler_config import SamplerConfig

    module, _ = load_run(video_run / "i2v")
    sampler = LatentDiffusionSampler.from_model(module)
    batches = []
    network_forward = sampler.network.forward
    monkeypatch.setattr(sampler.network, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or network_forward(x, *a, **k))
    image = torch.zeros(1, 3, 32, 32)
    sampler.image_to_video(image, 4, cfg=SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=1.0))
    assert set(batches) == {4}
    batches.clear()
    sampler.image_to_video(image, 4, cfg=SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=2.0))
    assert set(batches) == {8}


@pytest.mark.slow
def test_sample_py_writes_mp4_gif_and_json(video_run: Path, toy_root: Path, tmp_path: Path) -> None:
    from vldm.io.video_io import read_video
    from vldm.sampling.run import sample_videos

    cfg = sample_cfg(checkpoint=video_run / "i2v", image=toy_root / "first_frames", output_dir=tmp_path,
                     **{"sampler.num_steps": 2, "num_frames": 4})
    written = sample_videos(cfg)
    assert len(written) == 6
    frames, fps = read_video(written[0])
    assert frames.shape == (4, 32, 32, 3) and fps == pytest.approx(8)  # the toy clips' rate, recorded by training
    from safetensors import safe_open

    with safe_open(video_run / "i2v" / "model.safetensors", "pt") as weights:
        assert weights.metadata()["fps"] == "8"
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert meta["seed"] == 0 and meta["motion_bucket_id"] == 127 and meta["sampler"]["num_steps"] == 2
    assert json.loads(written[1].with_suffix(".json").read_text())["seed"] == 1
    assert written[0].with_suffix(".gif").is_file()


@pytest.mark.slow
def test_sample_py_errors(video_run: Path, toy_root: Path, tmp_path: Path) -> None:
    from vldm.sampling.run import sample_videos

    img = toy_root / "first_frames" / "val_000000.png"
    with pytest.raises(FileNotFoundError, match="no weights"):
        sample_videos(sample_cfg(checkpoint=tmp_path / "nope", image=img, output_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="image not found"):
        sample_videos(sample_cfg(checkpoint=video_run / "i2v", image=tmp_path / "x.png", output_dir=tmp_path))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        sample_videos(sample_cfg(checkpoint=video_run / "i2v", image=tmp_path / "bad.png", output_dir=tmp_path))
    with pytest.raises(ValueError, match="text-to-image"):
        sample_videos(sample_cfg(checkpoint=video_run / "image", image=img, output_dir=tmp_path))
    with pytest.raises(ValueError, match="motion_bucket_id"):
        sample_videos(sample_cfg(checkpoint=video_run / "i2v", image=img, output_dir=tmp_path, motion_bucket_id=300))
    with pytest.raises(ValueError, match="diffusion model"):
        sample_videos(sample_cfg(checkpoint=video_run / "autoencoder", image=img, output_dir=tmp_path))


def test_images_of_any_mode_and_size_are_brought_to_the_model_resolution(tmp_path: Path) -> None:
    rgba = Image.fromarray(np.full((30, 60, 4), 200, np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    Image.fromarray(np.full((50, 20), 10, np.uint8), "L").save(tmp_path / "b.jpg")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    for f in files:
        x = load_image(f, 32, 32)
        assert x.shape == (3, 32, 32) and -1 <= x.min() <= x.max() <= 1
    composited = 200 * 200 / 255 + 255 * (1 - 200 / 255)  # colour 200 at alpha 200 over white
    assert load_image(files[0], 32, 32)[0, 0, 0].item() == pytest.approx(composited / 127.5 - 1, abs=1e-2)
    Image.fromarray(np.full((17, 23), 30000, np.uint16)).save(tmp_path / "c16.png")  # 16-bit grey, odd size
    assert Image.open(tmp_path / "c16.png").mode.startswith("I")
    x16 = load_image(tmp_path / "c16.png", 32, 48)
    assert x16.shape == (3, 32, 48)
    assert x16.mean().item() == pytest.approx((30000 / 65535 * 255) / 127.5 - 1, abs=1e-2)  # scaled, not clipped
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        load_image(tmp_path / "notes.png", 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "empty")


@pytest.mark.slow
def test_sample_py_with_a_model_config_and_a_weights_file(video_run: Path, toy_root: Path, tmp_path: Path) -> None:
    """The official-checkpoint path (``model=... checkpoint=FILE``): lean strict load, resize=keep, frames out."""
    from vldm.io.safe_load import CheckpointError
    from vldm.sampling.run import sample_videos

    weights = video_run / "i2v" / "model.safetensors"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), np.uint8)).save(tmp_path / "wide.png")
    common = {"model": "toy_i2v", "checkpoint": weights, "output_dir": tmp_path / "out", "sampler.num_steps": 2}
    with pytest.raises(ValueError, match="height=... width=... num_frames=..."):
        sample_videos(sample_cfg(image=tmp_path / "wide.png", **common))
    written = sample_videos(sample_cfg(image=tmp_path / "wide.png", resize="keep", save_frames=True, height=32,
                                       width=32, num_frames=3, fps=8, seed=5, **common))
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert (meta["height"], meta["width"], meta["seed"], meta["fps_id"]) == (64, 64, 5, 7)  # 70x40 -> multiples of 64
    assert meta["memory_plan"]["cfg_mode"] == "batched"
    frames = sorted((tmp_path / "out" / f"{written[0].stem}_frames").glob("*.png"))
    assert written[0].stem.startswith("wide_seed5_")
    assert len(frames) == 3 and Image.open(frames[0]).size == (64, 64)
    with pytest.raises(CheckpointError, match="missing"):  # another model's file names what does not fit
        sample_videos(sample_cfg(**{**common, "model": "svd_xt"}, image=tmp_path / "wide.png"))


@pytest.mark.slow
def test_a_memory_budget_on_cpu_is_refused(video_run: Path, toy_root: Path, tmp_path: Path) -> None:
    """On CPU nothing streams or offloads and no peak is measured: a budget there would be a plan never applied."""
    from vldm.sampling.run import sample_videos

    image = sorted((toy_root / "first_frames").iterdir())[0]
    cfg = sample_cfg(checkpoint=video_run / "i2v", image=image, output_dir=tmp_path, device="cpu",
                     max_memory="20MB")
    with pytest.raises(ValueError, match="is a budget for CUDA memory"):
        sample_videos(cfg)
    assert not list(tmp_path.glob("*.json"))
