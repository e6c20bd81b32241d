"""Long image-to-video clips whose windows are conditioned on their own first frame (``long.condition``)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.configs import compose_train
from vldm.checkpoints.load import build_model
from vldm.diffusion.discretization import sigma_schedule
from vldm.diffusion.sampler_config import SamplerConfig
from vldm.diffusion.samplers import sample_euler
from vldm.sampling.long_video import LongVideo, sample_long, window_spans
from vldm.sampling.pipeline import LatentDiffusionSampler

CFG = SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=2.5)
IMAGE = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)


@pytest.fixture(scope="module")
def sampler() -> LatentDiffusionSampler:
    torch.manual_seed(0)
    module = build_model(compose_train(["stage=i2v", "experiment=smoke"]).model).eval()
    module.scale_factor.fill_(0.7)
    with torch.no_grad():
        for p in [*module.network.parameters(), *module.first_stage_model.parameters()]:
            p.add_(0.02 * torch.randn_like(p))
    return LatentDiffusionSampler.from_model(module)


def recorded_inputs(sampler: LatentDiffusionSampler, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    seen = []
    made = sampler.window_denoiser
    monkeypatch.setattr(sampler, "window_denoiser", lambda inputs, *a, **k: seen.append(inputs) or made(inputs, *a, **k))
    return seen


def test_overlap_defaults_to_half_the_window_and_windows_grow_affinely() -> None:
    assert LongVideo("extend", 6).overlap == 3 and LongVideo("windows", 7).overlap == 3
    assert LongVideo("windows", 6, 2).overlap == 2 and LongVideo().overlap is None
    counts = [len(window_spans(n, 6, LongVideo("extend", 6).overlap)) for n in (6, 12, 24)]
    assert counts == [1, 3, 7]  # 1 + 2 * (multiple - 1): time affine in length


def test_recondition_builds_each_later_window_from_its_first_carried_latents() -> None:
    """Window j predicts the constant j; the reconditioned denoiser gets the latents at the window's start."""
    spans = window_spans(8, 4, 2)  # (0, 4), (2, 6), (4, 8)
    noise = torch.randn(2 * 8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sigmas = sigma_schedule("karras", 3, 0.002, 80.0, 7.0)
    firsts = []

    def constant(j: float):
        return lambda x, sigma: torch.full_like(x, j)

    def recondition(first: torch.Tensor):
        firsts.append(first.clone())
        return constant(float(len(firsts)))

    z = sample_long(lambda d, x: sample_euler(d, x, sigmas), [constant(0.0)] * 3, noise, sigmas[0], 2, spans,
                    LongVideo("extend", 4, 2, condition="carried"), calls=3, recondition=recondition)
    z = z.reshape(2, 8, 1, 2, 2)
    assert len(firsts) == 2 and all(f.shape == (2, 1, 2, 2) for f in firsts)
    assert torch.allclose(firsts[0], z[:, 2]) and torch.allclose(firsts[1], z[:, 4])
    assert torch.allclose(z[:, :4], torch.zeros(2, 4, 1, 2, 2), atol=1e-6)
    assert torch.allclose(z[:, 4:6], torch.ones(2, 2, 1, 2, 2)) and torch.allclose(z[:, 6:], torch.full((2, 2, 1, 2, 2), 2.0))


@pytest.mark.parametrize("condition", ["carried", "carried-concat"])
def test_each_window_is_conditioned_on_its_decoded_first_frame(sampler: LatentDiffusionSampler, condition: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    long = LongVideo("extend", 4, 2, condition=condition)
    seen = recorded_inputs(sampler, monkeypatch)
    images = torch.cat([IMAGE, -IMAGE])
    z = sampler.image_to_video_latents(images, 10, cfg=CFG, seed=[3, 4], long=long)
    z = z.reshape(2, 10, *z.shape[1:])
    spans = window_spans(10, 4, 2)
    assert len(seen) == len(spans)  # the first window's conditioning, then one per later window
    assert torch.equal(seen[0]["cond_frames_without_noise"], images)
    for (s, _), inputs in zip(spans[1:], seen[1:]):
        frame = sampler.decode(z[:, s], num_frames=1)
        assert inputs["cond_frames"].shape == images.shape
        assert 0 < (inputs["cond_frames"] - frame).abs().max() < 0.2  # the frame plus cond_aug noise
        expected = frame if condition == "carried" else images
        assert torch.allclose(inputs["cond_frames_without_noise"], expected, atol=1e-5)
        assert not torch.allclose(frame, images, atol=1e-2)
    plain = sampler.image_to_video_latents(images, 10, cfg=CFG, seed=[3, 4], long=LongVideo("extend", 4, 2))
    plain = plain.reshape(z.shape)
    assert not torch.allclose(plain[:, 4:], z[:, 4:], atol=1e-3)
    assert torch.equal(plain[:, :4], z[:, :4])  # the first window is unchanged


def test_carried_conditioning_keeps_a_clip_of_the_trained_length_and_the_batch(sampler: LatentDiffusionSampler) -> None:
    long = LongVideo("extend", 4, condition="carried", anchor=True)
    assert torch.equal(sampler.image_to_video(IMAGE, 4, cfg=CFG, seed=3, long=long),
                       sampler.image_to_video(IMAGE, 4, cfg=CFG, seed=3))
    both = sampler.image_to_video(torch.cat([IMAGE, -IMAGE]), 9, cfg=CFG, seed=[3, 4], long=long)
    alone = sampler.image_to_video(-IMAGE, 9, cfg=CFG, seed=4, long=long)
    assert both.shape == (2, 9, 3, 32, 32) and torch.isfinite(both).all()
    assert (alone[0] - both[1]).abs().max() < 5e-3  # batch-size rounding, as in the plain sampler


def test_carried_conditioning_refuses_what_it_cannot_do(sampler: LatentDiffusionSampler) -> None:
    with pytest.raises(ValueError, match="long.condition must be one of first, carried, carried-concat; got 'last'"):
        LongVideo("extend", 4, 2, condition="last")
    with pytest.raises(ValueError, match="long.condition=carried .* needs long.method=extend, got long.method=windows"):
        LongVideo("windows", 4, 2, condition="carried")
    torch.manual_seed(0)
    t2v = LatentDiffusionSampler.from_model(build_model(compose_train(["stage=hq", "experiment=smoke"]).model).eval())
    with pytest.raises(ValueError, match="long.condition=carried-concat .* an image-to-video input"):
        t2v.text_to_video(["a red circle"], 10, 32, 32, cfg=CFG,
                          long=LongVideo("extend", 4, 2, condition="carried-concat"))


def test_reconstruction_guidance_moves_the_new_frames_down_the_carried_frames_error() -> None:
    """D(x) = every frame the mean frame: the gradient of 0.5 * |D(x)[:2] - known|^2 wrt each frame is
    (2 * mean - known_0 - known_1) / 4, subtracted (times the weight) from the new frames' prediction."""
    from vldm.sampling.long_video import carried_denoiser

    gen = torch.Generator().manual_seed(0)
    known, known_noise = torch.randn(1, 2, 3, 2, 2, generator=gen), torch.randn(1, 2, 3, 2, 2, generator=gen)
    x, sigma = torch.randn(4, 3, 2, 2, generator=gen), torch.tensor(0.5)

    def mean_frame(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return v.mean(dim=0, keepdim=True).expand_as(v)

    with torch.no_grad():  # as the samplers run
        plain = carried_denoiser(mean_frame, known, known_noise, 1)(x, sigma)
        guided = carried_denoiser(mean_frame, known, known_noise, 1, reconstruction=2.0)(x, sigma)
    entered = torch.cat([known[0] + sigma * known_noise[0], x[2:]])
    mean = entered.mean(dim=0)
    assert torch.allclose(plain[2:], mean.expand(2, 3, 2, 2), atol=1e-6)
    grad = (2 * mean - known[0, 0] - known[0, 1]) / 4
    assert torch.allclose(guided[2:], (mean - 2.0 * grad).expand(2, 3, 2, 2), atol=1e-5)
    assert torch.equal(guided[:2], known[0]) and not torch.allclose(guided, plain)


def test_reconstruction_guidance_is_refused_where_nothing_is_carried() -> None:
    with pytest.raises(ValueError, match="long.reconstruction .* needs long.method=extend .* got 1.0 with long.method=windows"):
        LongVideo("windows", 4, 2, reconstruction=1.0)
    with pytest.raises(ValueError, match="a weight of at least 0, got -1.0"):
        LongVideo("extend", 4, 2, reconstruction=-1.0)


def test_sample_config_takes_the_condition_and_the_reconstruction_weight() -> None:
    from tests.helpers.configs import compose
    from vldm.sampling.run import long_settings

    cfg = compose("sample", ["long.method=extend", "long.condition=carried", "long.reconstruction=0.5"])
    long = long_settings(cfg, {"num_frames": 6}, 24, "image_to_video")
    assert (long.window, long.overlap, long.condition, long.reconstruction) == (6, 3, "carried", 0.5)
    assert long_settings(compose("sample", []), {"num_frames": 6}, 24, "image_to_video").method == "none"
