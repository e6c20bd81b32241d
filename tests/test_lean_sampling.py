"""The sampler under a memory plan: same results however the memory is laid out."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.configs import compose_train
from vldm.checkpoints.load import build_model
from vldm.sampling.memory_plan import MemoryPlan, plan_for
from vldm.diffusion.sampler_config import SamplerConfig
from vldm.sampling.pipeline import LatentDiffusionSampler

CFG = SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=2.5)
LEANEST = MemoryPlan(unet="stream", image_encoder="stream", cond_frame_encoder="stream", vae_decoder="stream",
                     cfg_mode="sequential", attention_chunk=48, ff_chunk=100, decode_chunk_size=2, decode_overlap=1)


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn_like(p))  # zero-initialised branches would hide mistakes
    return module


@pytest.fixture(scope="module")
def i2v_module():
    torch.manual_seed(0)
    cfg = compose_train(["stage=i2v", "experiment=smoke"])
    module = build_model(cfg.model).eval()
    module.scale_factor.fill_(0.7)
    perturbed(module.network)
    perturbed(module.first_stage_model)
    return module


@pytest.fixture(scope="module")
def t2v_module():
    torch.manual_seed(0)
    module = build_model(compose_train(["stage=hq", "experiment=smoke"]).model).eval()
    module.scale_factor.fill_(0.7)
    perturbed(module.network)
    perturbed(module.first_stage_model)
    return module


def sampler_of(module, plan: MemoryPlan | None = None) -> LatentDiffusionSampler:
    return LatentDiffusionSampler(module.network, module.denoiser, module.conditioner, module.first_stage_model,
                                  float(module.scale_factor), plan=plan, device="cpu")


def video(sampler: LatentDiffusionSampler, cfg: SamplerConfig = CFG, clips: int = 1) -> torch.Tensor:
    image = torch.linspace(-1, 1, clips * 3 * 32 * 32).reshape(clips, 3, 32, 32)
    return sampler.image_to_video(image, 4, cfg=cfg, seed=3)


def test_fastest_plan_is_bit_identical_to_no_plan(i2v_module) -> None:
    reference = video(sampler_of(i2v_module))
    planned = sampler_of(i2v_module, MemoryPlan())
    assert torch.equal(video(planned), reference)
    assert planned.peak_memory is None and "not measured" in planned.memory_report()
    unguided = SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=1.0, max_guidance=1.0)
    assert torch.equal(video(sampler_of(i2v_module, MemoryPlan(cfg_mode="none")), unguided),
                       video(sampler_of(i2v_module), unguided))


def test_sequential_guidance_equals_batched(i2v_module, monkeypatch: pytest.MonkeyPatch) -> None:
    batched = video(sampler_of(i2v_module), clips=2)
    sampler = sampler_of(i2v_module, MemoryPlan(cfg_mode="sequential"))
    batches = []
    forward = sampler.network.forward
    monkeypatch.setattr(sampler.network, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k))
    sequential = video(sampler, clips=2)
    assert set(batches) == {8}  # 2 clips x 4 frames, never the doubled batch
    assert (sequential - batched).abs().max().item() <= 1e-4  # float rounding of half vs whole batches


def test_leanest_layout_gives_the_same_video(i2v_module) -> None:
    reference = video(sampler_of(i2v_module))
    module = copy.deepcopy(i2v_module)
    sampler = sampler_of(module, LEANEST)
    streamer = sampler._placement.streamer
    assert len(streamer.units) == len(module.network.input_blocks) + len(module.network.output_blocks) + 4
    lean = video(sampler)
    assert (lean - reference).abs().max().item() <= 1e-4  # rounding of chunks and half batches, over 2 steps
    assert all(u.loads >= 1 and not u.loaded for u in streamer.units)
    sampler.apply_plan(MemoryPlan(unet="stream", image_encoder="stream", cond_frame_encoder="stream",
                                  vae_decoder="stream"), "cpu")
    assert torch.equal(video(sampler), reference)  # streaming alone moves nothing on a CPU: bit-identical
    streamer = sampler._placement.streamer
    sampler.release_plan()
    assert sampler.plan is None and streamer.hooks == []
    assert all(getattr(m, "chunk_size", None) is None for m in module.network.modules())


def test_low_precision_plan_casts_weights_and_stays_close(i2v_module) -> None:
    reference = video(sampler_of(i2v_module))
    module = copy.deepcopy(i2v_module)
    sampler = sampler_of(module, MemoryPlan(dtype="bf16", vae_dtype="fp32"))
    assert next(module.network.parameters()).dtype == torch.bfloat16
    assert next(module.first_stage_model.decoder.parameters()).dtype == torch.float32
    out = video(sampler)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - reference).abs().mean().item() < 0.05
    low_image = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32).to(torch.bfloat16)  # as bench/sample.py
    assert torch.isfinite(sampler.image_to_video(low_image, 4, cfg=CFG, seed=3)).all()
    sampler.apply_plan(MemoryPlan(dtype="bf16", vae_dtype="bf16", vae_decoder="stream"), "cpu")
    assert next(module.first_stage_model.decoder.parameters()).dtype == torch.bfloat16
    assert (video(sampler) - reference).abs().mean().item() < 0.05


def test_plan_without_unconditional_pass_refuses_guidance(i2v_module) -> None:
    with pytest.raises(ValueError, match="cfg_mode none"):
        video(sampler_of(i2v_module, MemoryPlan(cfg_mode="none")))


def test_plan_for_a_module_and_its_errors(i2v_module) -> None:
    fastest = plan_for(i2v_module, None, 4, 32, 32, device="cpu")
    assert fastest == MemoryPlan(estimates=fastest.estimates)
    assert set(fastest.estimates) == {"conditioning", "denoising", "decoding"}
    budget = int(0.95 * fastest.estimated_peak_bytes)  # 10 % headroom: the fastest plan no longer fits
    lean = plan_for(i2v_module, budget, 4, 32, 32, device="cpu")
    assert lean != fastest and lean.budget_bytes == budget and lean.estimated_peak_bytes <= 0.9 * budget
    with pytest.raises(MemoryError, match="no sampling plan fits in 100 KiB"):
        plan_for(i2v_module, "100KiB", 4, 32, 32, device="cpu")


def test_a_text_to_video_model_gives_the_same_clip_under_the_leanest_plan(t2v_module) -> None:
    """No conditioning-frame encoder to place: the text tower streams, the UNet streams, guidance runs sequential."""
    cfg = SamplerConfig(num_steps=2, sigma_max=80.0, min_guidance=2.0, max_guidance=2.0)

    def clip(sampler: LatentDiffusionSampler) -> torch.Tensor:
        return sampler.text_to_video(["a red circle moving right", "a blue square"], 4, 32, 32, cfg=cfg, seed=[3, 4])

    reference = clip(sampler_of(t2v_module))
    module = copy.deepcopy(t2v_module)
    sampler = sampler_of(module, LEANEST)
    lean = clip(sampler)
    assert lean.shape == (2, 4, 3, 32, 32)
    assert (lean - reference).abs().max().item() <= 1e-4
    fastest = plan_for(t2v_module, None, 4, 32, 32, device="cpu")
    lean_plan = plan_for(t2v_module, int(0.95 * fastest.estimated_peak_bytes), 4, 32, 32, device="cpu")
    assert lean_plan != fastest and lean_plan.estimated_peak_bytes <= 0.9 * 0.95 * fastest.estimated_peak_bytes


def test_temporal_decoder_is_decoded_per_clip_in_overlapping_chunks(i2v_module) -> None:
    from vldm.nn.autoencoder import AutoencoderKL

    module = copy.deepcopy(i2v_module)
    ae = module.first_stage_model
    temporal = AutoencoderKL(ch=ae.decoder.conv_in.out_channels // ae.ch_mult[-1], ch_mult=ae.ch_mult,
                             num_res_blocks=len(ae.decoder.up[0].block) - 1, z_channels=4, embed_dim=ae.embed_dim,
                             decoder="temporal").eval()
    temporal.load_state_dict(ae.state_dict(), strict=False)
    perturbed(temporal.decoder)
    sampler = sampler_of(module)
    sampler.first_stage = temporal
    calls = []
    decode = temporal.decode
    temporal.decode = lambda z, num_frames=None: calls.append((z.shape[0], num_frames)) or decode(z, num_frames)
    z = torch.randn(2 * 6, 4, 8, 8)
    whole = sampler.decode(z, num_frames=6)
    assert calls == [(12, 6)]
    calls.clear()
    chunked = sampler.decode(z, chunk_size=4, num_frames=6)
    assert calls == [(8, 4), (6, 3)]  # chunks (0, 4), (3, 6): overlap capped at a third of the chunk
    assert whole.shape == chunked.shape == (12, 3, 32, 32)
