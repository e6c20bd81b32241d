"""The text-to-video base model (SVD paper, stages II-III) and its widening into image-to-video (Sec. 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.configs import compose_train
from tests.helpers.models import TINY_UNET, randomize, save_state
from vldm.checkpoints.load import build_model
from vldm.checkpoints.stage_weights import load_stage_weights
from vldm.io.safe_load import CheckpointError
from vldm.nn.unet import UNet
from vldm.nn.widen import load_widened


def video_unet(**overrides) -> UNet:
    return UNet(**{**TINY_UNET, "video": True, **overrides}).eval()


def unet_inputs(b: int = 2, t: int = 4):
    return torch.randn(b * t, 4, 8, 8), torch.randn(b * t), torch.randn(b * t, 3, 24)


def test_widened_network_equals_the_base_model_with_its_new_inputs_zero() -> None:
    base = randomize(video_unet(adm_in_channels=12), seed=1)
    wide = video_unet(in_channels=8, adm_in_channels=18)
    load_widened(wide, base.state_dict())
    x, ts, ctx = unet_inputs()
    y = torch.randn(8, 12)
    concat, aug = torch.randn_like(x), torch.randn(8, 6)  # the conditioning latent and cond_aug's sinusoids
    with torch.no_grad():
        want = base(x, ts, ctx, y=y, num_frames=4)
        got = wide(torch.cat([x, concat], 1), ts, ctx, y=torch.cat([y, aug], 1), num_frames=4)
        diff = (want - got).abs().max().item()
        assert diff <= 1e-5
        wide.input_blocks[0][0].weight[:, 4:].normal_(0.0, 0.05)  # training moves the new channels ...
        moved = wide(torch.cat([x, concat], 1), ts, ctx, y=torch.cat([y, aug], 1), num_frames=4)
    assert (moved - want).abs().max().item() > 1e-3  # ... and then the conditioning latent counts


@pytest.mark.parametrize("change, message", [
    ({"context_dim": 16}, "shape mismatch for .*attn2"),
    ({"in_channels": 12}, "only dimension 1 may grow"),
])
def test_widening_refuses_weights_of_another_size(change: dict, message: str) -> None:
    base = video_unet(adm_in_channels=12, **change)
    with pytest.raises(KeyError, match=message):
        load_widened(video_unet(in_channels=8, adm_in_channels=18), base.state_dict())


def toy_model(stage: str):
    model = build_model(compose_train([f"stage={stage}"]).model)
    model.scale_factor.fill_(0.7)
    return model.eval()


def test_i2v_stage_starts_from_the_t2v_model_file_with_the_same_prediction(tmp_path: Path) -> None:
    """The toy i2v model filled from a toy t2v file (stage.init_mode=i2v) predicts what the t2v model
    predicts, given the same context token and vector conditioning, whatever the concat latent and cond_aug."""
    t2v = toy_model("hq")
    assert t2v.task == "text_to_video"
    randomize(t2v.network, seed=3)
    path = save_state(t2v.state_dict(), tmp_path / "model.safetensors")
    i2v = toy_model("i2v")
    assert i2v.task == "image_to_video"
    load_stage_weights(i2v, path, "i2v")
    assert i2v.scale_factor.item() == pytest.approx(0.7)
    for key, value in t2v.first_stage_model.state_dict().items():
        assert torch.equal(i2v.first_stage_model.state_dict()[key], value)
    t, x = 3, torch.randn(6, 4, 8, 8)
    sigma, ctx, vec = torch.rand(6) + 0.5, torch.randn(6, 1, 64), torch.randn(6, 64)
    extra = {"num_frames": t, "image_only_indicator": torch.zeros(2, t)}
    with torch.no_grad():
        want = t2v.denoiser(t2v.model, x, sigma, {"crossattn": ctx, "vector": vec}, **extra)
        got = i2v.denoiser(i2v.model, x, sigma, {"crossattn": ctx, "vector": torch.cat([vec, torch.randn(6, 32)], 1),
                                                  "concat": torch.randn(6, 4, 8, 8)}, **extra)
    assert (want - got).abs().max().item() <= 1e-5


def test_init_mode_i2v_refuses_an_image_model_and_a_text_model_target(tmp_path: Path) -> None:
    image = toy_model("image")
    path = save_state(image.state_dict(), tmp_path / "image.safetensors")
    with pytest.raises(CheckpointError, match="holds an image UNet.*text-to-video stage"):
        load_stage_weights(toy_model("i2v"), path, "i2v")
    t2v_path = save_state(toy_model("hq").state_dict(), tmp_path / "t2v.safetensors")
    with pytest.raises(CheckpointError, match="fills an image-to-video model; this stage's model is text-to-video"):
        load_stage_weights(toy_model("hq"), t2v_path, "i2v")


def test_changing_fps_changes_the_vector_the_network_sees() -> None:
    """Micro-conditioning: fps_id and motion_bucket_id each own their part of the vector, and moving either
    changes the prediction of a trained (randomised) network."""
    from vldm.conditioning.t2v_inputs import t2v_inputs

    model = toy_model("hq")
    randomize(model.network, seed=5)
    captions = ["a red circle moving right"] * 2

    def vector(fps_id: int, bucket: int) -> torch.Tensor:
        return model.conditioner(t2v_inputs(captions, fps_id, bucket))["vector"]

    base, fps, bucket = vector(6, 100), vector(7, 100), vector(6, 180)
    assert base.shape == (2, 64)
    assert not torch.allclose(base[:, :32], fps[:, :32]) and torch.equal(base[:, 32:], fps[:, 32:])
    assert torch.equal(base[:, :32], bucket[:, :32]) and not torch.allclose(base[:, 32:], bucket[:, 32:])
    x, sigma = torch.randn(2, 4, 8, 8), torch.ones(2)
    ctx = model.conditioner(t2v_inputs(captions, 6, 100))["crossattn"]
    extra = {"num_frames": 1, "image_only_indicator": torch.zeros(2, 1)}
    with torch.no_grad():
        outs = [model.denoiser(model.model, x, sigma, {"crossattn": ctx, "vector": v}, **extra) for v in (base, fps)]
    assert (outs[0] - outs[1]).abs().max().item() > 1e-4


def test_the_smoke_chain_is_text_to_video_then_image_to_video(smoke_chain: Path) -> None:
    from vldm.checkpoints.load import load_run

    tasks = {stage: load_run(smoke_chain / stage / "model.safetensors")[0].task for stage in ("image", "video", "hq", "i2v")}
    assert tasks == {"image": "text_to_image", "video": "text_to_video", "hq": "text_to_video", "i2v": "image_to_video"}


def test_text_to_video_sampling_is_seeded_per_caption(smoke_chain: Path) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.sampling.pipeline import LatentDiffusionSampler

    model, _ = load_run(smoke_chain / "hq" / "model.safetensors")
    sampler = LatentDiffusionSampler.from_model(model.eval())
    cfg = SamplerConfig(num_steps=2, min_guidance=2.0, max_guidance=2.0)
    both = sampler.text_to_video(["a red circle moving right", "a blue square moving left"], 3, 32, 32, 7, 120,
                                 cfg, seed=[4, 5])
    one = sampler.text_to_video(["a blue square moving left"], 3, 32, 32, 7, 120, cfg, seed=[5])
    assert both.shape == (2, 3, 3, 32, 32) and both.abs().max() <= 1.0
    assert torch.allclose(both[1:], one, atol=1e-3)  # the same noise; batched float rounding only
    other = sampler.text_to_video(["a red circle moving right"], 3, 32, 32, 7, 120, cfg, seed=[5])
    assert (other - one).abs().max().item() > 1e-4  # the caption changes the video
