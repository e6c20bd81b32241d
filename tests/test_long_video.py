"""Clips longer than the trained length: window schedule, blending, both methods, the anchor, bad input."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.configs import compose_train
from vldm.checkpoints.load import build_model
from vldm.diffusion.sampler_config import SamplerConfig
from vldm.sampling.long_video import (LongVideo, anchor_windows, blend_weights, channel_stats, initial_noise,
                                      window_spans, windowed_denoiser)
from vldm.sampling.pipeline import LatentDiffusionSampler

CFG = SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=2.5)
METHODS = [LongVideo("windows", 4, 1), LongVideo("windows", 4, 2, noise="freenoise", anchor=True),
           LongVideo("extend", 4, 2), LongVideo("extend", 4, 1, anchor=True, noise="freenoise")]


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return module


@pytest.fixture(scope="module")
def sampler() -> LatentDiffusionSampler:
    torch.manual_seed(0)
    module = build_model(compose_train(["stage=i2v", "experiment=smoke"]).model).eval()
    module.scale_factor.fill_(0.7)
    perturbed(module.network)
    perturbed(module.first_stage_model)
    return LatentDiffusionSampler.from_model(module)


@pytest.fixture(scope="module")
def t2v_sampler() -> LatentDiffusionSampler:
    torch.manual_seed(0)
    module = build_model(compose_train(["stage=hq", "experiment=smoke"]).model).eval()
    module.scale_factor.fill_(0.7)
    perturbed(module.network)
    return LatentDiffusionSampler.from_model(module)


IMAGE = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)


def test_windows_cover_the_clip_with_the_asked_overlap() -> None:
    assert window_spans(4, 6, 2) == [(0, 4)]
    assert window_spans(6, 6, 2) == [(0, 6)]
    assert window_spans(14, 6, 2) == [(0, 6), (4, 10), (8, 14)]
    assert window_spans(12, 6, 2) == [(0, 6), (4, 10), (6, 12)]  # the last one ends at the clip's end
    for n, w, o in [(24, 6, 2), (25, 7, 3), (9, 4, 0), (30, 6, 5)]:
        spans = window_spans(n, w, o)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(e - s == w for s, e in spans)
        assert all(b[0] <= a[1] - o and b[0] > a[0] for a, b in zip(spans, spans[1:]))


def test_blend_weights_are_positive_and_sum_to_one_across_a_seam() -> None:
    spans = window_spans(14, 6, 2)
    weights = blend_weights(spans)
    total = torch.zeros(14, dtype=torch.float64)
    for (s, e), w in zip(spans, weights):
        assert (w > 0).all() and (w <= 1).all()
        total[s:e] += w
    assert torch.allclose(total, torch.ones(14, dtype=torch.float64))
    assert weights[0][:4].eq(1).all() and weights[1][2:4].eq(1).all()
    assert weights[1][0] < weights[1][1] < 1  # ramps up into the window


def test_windowed_denoiser_blends_each_windows_prediction() -> None:
    """Window j predicts the constant j: a frame inside one window gets its value, a shared frame a mix."""
    spans = window_spans(10, 4, 2)  # (0,4) (2,6) (4,8) (6,10)
    denoisers = [lambda x, s, j=j: torch.full_like(x, float(j)) for j in range(len(spans))]
    out = windowed_denoiser(denoisers, spans, clips=2)(torch.zeros(2 * 10, 1, 1, 1), torch.tensor(1.0))
    per_frame = out.reshape(2, 10)[0]
    assert per_frame[0] == 0 and per_frame[9] == 3
    assert 0 < per_frame[2] < 1 and per_frame[2] < per_frame[3] and 2 < per_frame[7] < 3
    assert torch.equal(out.reshape(2, 10)[0], out.reshape(2, 10)[1])


def test_freenoise_reuses_the_first_windows_frames_shuffled() -> None:
    spans = window_spans(14, 6, 2)
    noise = initial_noise((14, 4, 2, 2), 1, spans, "freenoise", torch.Generator().manual_seed(0))
    first = noise[:6].reshape(6, -1)
    for t in range(6, 14):
        assert any(torch.equal(noise[t].flatten(), f) for f in first)
    assert not torch.equal(noise[6:12], noise[:6])
    independent = initial_noise((14, 4, 2, 2), 1, spans, "independent", torch.Generator().manual_seed(0))
    assert torch.equal(independent, torch.randn((14, 4, 2, 2), generator=torch.Generator().manual_seed(0)))


def test_anchor_matches_every_windows_statistics_to_the_first() -> None:
    gen = torch.Generator().manual_seed(1)
    spans = [(0, 4), (4, 8)]
    z = torch.randn(1, 8, 3, 4, 4, generator=gen)
    z[:, 4:] = z[:, 4:] * 2.0 + 1.5  # the second window drifted in exposure
    out = anchor_windows(z, spans)
    ref_mean, ref_std = channel_stats(out[:, :4])
    mean, std = channel_stats(out[:, 4:])
    assert torch.allclose(mean, ref_mean, atol=1e-5) and torch.allclose(std, ref_std, atol=1e-5)
    assert torch.allclose(out[:, :4], z[:, :4], atol=1e-6)


def test_a_clip_of_the_trained_length_is_todays_sample(sampler: LatentDiffusionSampler) -> None:
    today = sampler.image_to_video(IMAGE, 4, cfg=CFG, seed=3)
    for long in METHODS:
        assert torch.equal(sampler.image_to_video(IMAGE, 4, cfg=CFG, seed=3, long=long), today), long
    shorter = sampler.image_to_video(IMAGE, 3, cfg=CFG, seed=3)
    assert torch.equal(sampler.image_to_video(IMAGE, 3, cfg=CFG, seed=3, long=METHODS[-1]), shorter)


@pytest.mark.parametrize("long", METHODS[1:3], ids=lambda m: f"{m.method}-{m.noise}-{m.anchor}")
def test_long_clips_run_one_window_at_a_time(sampler: LatentDiffusionSampler, long: LongVideo,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    batches = []
    forward = sampler.network.forward
    monkeypatch.setattr(sampler.network, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k))
    video = sampler.image_to_video(IMAGE.repeat(2, 1, 1, 1), 10, cfg=CFG, seed=[3, 4], long=long)
    assert video.shape == (2, 10, 3, 32, 32) and torch.isfinite(video).all()
    assert set(batches) == {2 * 2 * 4}  # two clips, cond + uncond, one window of 4 frames
    spans = window_spans(10, 4, long.overlap)
    assert len(batches) == CFG.num_steps * len(spans)
    alone = sampler.image_to_video(IMAGE, 10, cfg=CFG, seed=4, long=long)
    assert (alone[0] - video[1]).abs().max() < 5e-4  # batch-size rounding, as in the plain sampler


def test_extend_feeds_the_carried_frames_renoised_and_keeps_them() -> None:
    """Window j predicts the constant j: the carried frames enter window 1 as the first window's
    latents plus sigma times the noise they were drawn with, and stay the first window's."""
    from vldm.diffusion.discretization import sigma_schedule
    from vldm.diffusion.samplers import sample_euler
    from vldm.sampling.long_video import sample_long

    spans = window_spans(6, 4, 2)  # (0, 4), (2, 6)
    noise = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sigmas = sigma_schedule("karras", 3, 0.002, 80.0, 7.0)
    seen = []

    def window(j: int):
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            seen.append((j, x.clone(), sigma))
            return torch.full_like(x, float(j))
        return denoise

    z = sample_long(lambda d, x: sample_euler(d, x, sigmas), [window(0), window(1)], noise, sigmas[0], 1, spans,
                    LongVideo("extend", 4, 2), calls=3)
    assert torch.allclose(z[:4], torch.zeros(4, 1, 2, 2), atol=1e-6) and torch.allclose(z[4:], torch.ones(2, 1, 2, 2))
    second = [(x, sigma) for j, x, sigma in seen if j == 1]
    assert len(second) == 3
    for x, sigma in second:
        assert torch.allclose(x[:2], z[2:4] + sigma * noise[2:4], atol=1e-5)


def test_t2v_takes_a_prompt_per_window(t2v_sampler: LatentDiffusionSampler) -> None:
    long = LongVideo("windows", 4, 2, prompts=("a red circle", "a blue square", "a green ball", "a red circle"))
    video = t2v_sampler.text_to_video(["a red circle"], 10, 32, 32, cfg=CFG, seed=1, long=long)
    assert video.shape == (1, 10, 3, 32, 32)
    same = LongVideo("windows", 4, 2, prompts=("a red circle",) * 4)
    one = LongVideo("windows", 4, 2)
    assert torch.equal(t2v_sampler.text_to_video(["a red circle"], 10, 32, 32, cfg=CFG, seed=1, long=same),
                       t2v_sampler.text_to_video(["a red circle"], 10, 32, 32, cfg=CFG, seed=1, long=one))
    assert not torch.equal(video, t2v_sampler.text_to_video(["a red circle"], 10, 32, 32, cfg=CFG, seed=1, long=one))
    with pytest.raises(ValueError, match="3 segment prompts for 10 frames in 4 windows .* give exactly 4 prompts"):
        t2v_sampler.text_to_video(["a"], 10, 32, 32, cfg=CFG, long=LongVideo("windows", 4, 2, prompts=("a",) * 3))


def test_bad_long_settings_are_refused(sampler: LatentDiffusionSampler) -> None:
    with pytest.raises(ValueError, match="overlap must be at least 0 and smaller than the window of 4"):
        LongVideo("windows", 4, 4)
    with pytest.raises(ValueError, match="overlap must be at least 0 and smaller than the window of 4"):
        LongVideo("extend", 4, 7)
    with pytest.raises(ValueError, match="long.method must be one of none, windows, extend; got 'loop'"):
        LongVideo("loop", 4, 1)
    with pytest.raises(ValueError, match="long.noise must be one of independent, freenoise"):
        LongVideo("windows", 4, 1, noise="pink")
    with pytest.raises(ValueError, match="extend carries .* at least 1"):
        LongVideo("extend", 4, 0)
    with pytest.raises(ValueError, match="num_frames must be at least 1, got 0"):
        sampler.image_to_video(IMAGE, 0, cfg=CFG, long=LongVideo("windows", 4, 1))
    with pytest.raises(ValueError, match="num_frames must be at least 1, got -2"):
        window_spans(-2, 4, 1)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> "Path":
    from tests.helpers.models import save_state

    torch.manual_seed(0)
    module = build_model(compose_train(["stage=i2v", "experiment=smoke"]).model).eval()
    module.scale_factor.fill_(0.7)
    perturbed(module.network)
    path = tmp_path_factory.mktemp("long") / "i2v.safetensors"
    return save_state(module.state_dict(), path)


def long_cfg(weights, out, image, **overrides):
    from tests.helpers.configs import compose

    base = {"model": "toy_i2v", "checkpoint": weights, "output_dir": out, "image": image, "sampler.num_steps": 2,
            "sampler.sigma_max": 80.0, "height": 32, "width": 32, "fps": 8, "long.window": 4}
    return compose("sample", [f"{k}={v}" for k, v in {**base, **overrides}.items()])


def test_sample_py_writes_a_long_clip_window_by_window(weights_file, tmp_path) -> None:
    import json

    from PIL import Image

    from vldm.io.video_io import read_video
    from vldm.sampling.run import sample_videos

    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(tmp_path / "frame.png")
    written = sample_videos(long_cfg(weights_file, tmp_path / "out", tmp_path / "frame.png", num_frames=10,
                                     **{"long.method": "extend", "long.anchor": "true"}))
    frames, _ = read_video(written[0])
    assert frames.shape == (10, 32, 32, 3) and written[0].with_suffix(".gif").is_file()
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert meta["num_frames"] == 10 and meta["long"]["method"] == "extend" and meta["long"]["anchor"] is True
    assert meta["long"]["windows"] == [[0, 4], [2, 6], [4, 8], [6, 10]]
    short = sample_videos(long_cfg(weights_file, tmp_path / "short", tmp_path / "frame.png", num_frames=4,
                                   **{"long.method": "windows"}))
    plain = sample_videos(long_cfg(weights_file, tmp_path / "plain", tmp_path / "frame.png", num_frames=4))
    assert short[0].name == plain[0].name and short[0].read_bytes() == plain[0].read_bytes()
    assert "long" not in json.loads(short[0].with_suffix(".json").read_text())


def test_sample_py_refuses_bad_long_settings(weights_file, tmp_path) -> None:
    from PIL import Image

    from vldm.sampling.run import sample_videos

    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(tmp_path / "frame.png")
    image = tmp_path / "frame.png"
    with pytest.raises(ValueError, match="num_frames must be at least 1, got 0"):
        sample_videos(long_cfg(weights_file, tmp_path, image, num_frames=0, **{"long.method": "windows"}))
    with pytest.raises(ValueError, match="long.overlap must be at least 0 and smaller than the window of 4"):
        sample_videos(long_cfg(weights_file, tmp_path, image, num_frames=12,
                               **{"long.method": "windows", "long.overlap": 4}))
    with pytest.raises(ValueError, match="long.prompts .* is for text-to-video models"):
        sample_videos(long_cfg(weights_file, tmp_path, image, num_frames=12,
                               **{"long.method": "windows", "long.prompts": "[a,b]"}))
    with pytest.raises(Exception, match="window_size"):
        long_cfg(weights_file, tmp_path, image, **{"long.window_size": 3})
    assert not list(tmp_path.glob("*.json"))
