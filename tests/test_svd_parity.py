"""Numerical parity with diffusers' independent Stable Video Diffusion implementation.

Our SGM-layout networks are filled with random weights, mapped into diffusers / transformers with
the strict name maps of :mod:`vldm.testing.diffusers_maps`, and run on the same inputs: the video UNet
(``UNetSpatioTemporalConditionModel``), the temporal VAE decoder and the conditioning-frame encoder
(``AutoencoderKLTemporalDecoder``), the CLIP image tower (``CLIPVisionModelWithProjection``), and a
whole image-to-video run against ``StableVideoDiffusionPipeline`` with the same random numbers.

One known deviation of diffusers from the official SGM code is corrected on the reference side
and tested explicitly: its UNet resnets normalise with GroupNorm eps 1e-6 where SGM uses 1e-5
(:func:`vldm.testing.diffusers_bridge.use_sgm_resnet_eps_`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vldm.testing.diffusers_bridge import (
    SD_VAE, SVD_UNET, TINY_CLIP, TINY_SCALAR_DIM, TINY_SVD_UNET, TINY_SVD_VAE, build_hf_image_encoder, build_reference_pipeline,
    build_tiny_svd_module, diffusers_unet_config, diffusers_vae_config, load_strict, randomize_, use_sgm_resnet_eps_,
)
from vldm.testing.diffusers_maps import sgm_unet_to_diffusers, sgm_vae_to_diffusers, sub_state

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------------ UNet

@pytest.fixture(scope="module")
def unet_pair():
    """Our random video UNet and diffusers' UNet holding its weights (diffusers' own GroupNorm eps)."""
    from vldm.nn.unet import UNet

    ours = randomize_(UNet(**TINY_SVD_UNET), seed=1).eval()
    ref = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(ours.config, TINY_SCALAR_DIM)).eval()
    load_strict(ref, sgm_unet_to_diffusers(ours.state_dict()))
    return ours, ref


def _unet_inputs(b: int = 2, t: int = 3, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([3.0, 0.4])[:b]
    return dict(x=torch.randn(b, t, 8, size, size, generator=g), c_noise=0.25 * sigma.log(),
                context=torch.randn(b, 1, TINY_SVD_UNET["context_dim"], generator=g),
                ids=torch.tensor([[6.0, 127.0, 0.02], [11.0, 30.0, 0.5]])[:b])


@torch.no_grad()
def _run_unets(ours, ref, inp: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND

    x, ids = inp["x"], inp["ids"]
    b, t = x.shape[:2]
    embed = ConcatTimestepEmbedderND(TINY_SCALAR_DIM)
    y = torch.cat([embed(ids[:, i]) for i in range(3)], dim=1)  # the conditioner's vector: fps, motion, aug
    out = ours(x.flatten(0, 1), inp["c_noise"].repeat_interleave(t), context=inp["context"].repeat_interleave(t, 0),
               y=y.repeat_interleave(t, 0), num_frames=t, image_only_indicator=torch.zeros(b, t))
    # diffusers takes one timestep per call, so each video runs on its own
    expected = torch.cat([ref(x[i:i + 1], inp["c_noise"][i], encoder_hidden_states=inp["context"][i:i + 1],
                              added_time_ids=ids[i:i + 1]).sample[0] for i in range(b)])
    return out, expected


def test_unet_map_is_complete_and_one_to_one(unet_pair) -> None:
    ours, ref = unet_pair
    mapped = sgm_unet_to_diffusers(ours.state_dict())
    assert len(mapped) == len(ours.state_dict()) == len(ref.state_dict())
    assert any(k.endswith("temporal_res_block.conv1.weight") for k in mapped)
    assert any(".temporal_transformer_blocks.0.ff_in." in k for k in mapped)
    assert any(k.startswith("up_blocks.0.upsamplers.0.conv") for k in mapped)
    assert "down_blocks.3.downsamplers.0.conv.weight" not in mapped  # last level has no downsampler
    assert {k.split(".")[0] for k in mapped} == {k.split(".")[0] for k in ref.state_dict()}


def test_micro_conditioning_sinusoid_matches_diffusers() -> None:
    """Ours: cos first, frequencies ``10000^(-i/half)``; diffusers: ``Timesteps(d, flip_sin_to_cos=True,
    downscale_freq_shift=0)`` (what ``add_time_proj`` uses)."""
    from diffusers.models.embeddings import Timesteps

    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND

    values = torch.tensor([0.02, 6.0, 127.0, 255.0])
    ours = ConcatTimestepEmbedderND(TINY_SCALAR_DIM)(values)
    ref = Timesteps(TINY_SCALAR_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)(values)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def unet_outputs(unet_pair) -> dict:
    """Ours, diffusers as shipped, and diffusers with SGM's resnet eps, on the same inputs."""
    ours, ref = unet_pair
    inputs = _unet_inputs()
    out, as_shipped = _run_unets(ours, ref, inputs)
    aligned_ref = copy.deepcopy(ref)
    changed = use_sgm_resnet_eps_(aligned_ref)
    _, aligned = _run_unets(ours, aligned_ref, inputs)
    return dict(ours=out, as_shipped=as_shipped, aligned=aligned, changed=changed)


def test_unet_parity_with_diffusers(unet_outputs: dict) -> None:
    out, expected = unet_outputs["ours"], unet_outputs["aligned"]
    assert out.shape == expected.shape == (6, 4, 16, 16)
    assert expected.abs().mean() > 0.05  # nothing trivially zero
    assert rel_err(out, expected) <= 1e-4


def test_diffusers_resnet_eps_is_the_only_unet_deviation(unet_outputs: dict) -> None:
    """diffusers builds 72 of the 88 resnet GroupNorms of this UNet with eps 1e-6; SGM's
    ``normalization()`` is ``GroupNorm32(32, c)``, eps 1e-5, everywhere (as ours). As shipped, the
    outputs differ measurably more than with SGM's eps."""
    assert unet_outputs["changed"] == 72
    out = unet_outputs["ours"]
    assert rel_err(out, unet_outputs["aligned"]) * 5 < rel_err(out, unet_outputs["as_shipped"])


# ------------------------------------------------------------------------------------------------ VAE

@pytest.fixture(scope="module")
def vae_pair():
    """Our temporal first stage and conditioning-frame autoencoder, and diffusers' VAE holding both."""
    from vldm.nn.autoencoder import AutoencoderKL

    first = randomize_(AutoencoderKL(**TINY_SVD_VAE, use_quant_conv=False, decoder="temporal"), seed=2).eval()
    cond = randomize_(AutoencoderKL(**TINY_SVD_VAE, use_quant_conv=True), seed=3).eval()
    ref = diffusers.AutoencoderKLTemporalDecoder(**diffusers_vae_config(**TINY_SVD_VAE)).eval()
    load_strict(ref, sgm_vae_to_diffusers(sub_state(cond.state_dict(), ["encoder.", "quant_conv."]),
                                          sub_state(first.state_dict(), ["decoder."])))
    return first, cond, ref


@torch.no_grad()
def test_temporal_decoder_parity_with_diffusers(vae_pair) -> None:
    first, _, ref = vae_pair
    z = torch.randn(2 * 5, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # two clips of 5 frames
    out = first.decode(z, num_frames=5)
    expected = ref.decode(z, num_frames=5).sample
    assert out.shape == expected.shape == (10, 3, 32, 32)
    assert rel_err(out, expected) <= 1e-4
    # the clips are decoded independently on both sides
    torch.testing.assert_close(first.decode(z[:5], num_frames=5), out[:5], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_conditioning_frame_encoder_parity_with_diffusers(vae_pair) -> None:
    _, cond, ref = vae_pair
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours, theirs = cond.encode(x), ref.encode(x).latent_dist
    assert rel_err(ours.mode(), theirs.mode()) <= 1e-5
    assert rel_err(ours.logvar, theirs.logvar) <= 1e-5


# ------------------------------------------------------------------------------------------------ CLIP

@torch.no_grad()
def test_clip_image_tower_maps_to_transformers() -> None:
    from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder

    embedder = randomize_(OpenCLIPImageEmbedder(model_cfg=TINY_CLIP), seed=4)
    hf = build_hf_image_encoder(embedder.model.visual)
    assert hf.config.hidden_act == "gelu"  # OpenCLIP ViT-H-14 / our tiny tower use exact GELU
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours, theirs = embedder.model.visual(x), hf(pixel_values=x).image_embeds
    assert ours.shape == theirs.shape == (3, TINY_CLIP["embed_dim"])
    assert rel_err(ours, theirs) <= 1e-5


# ------------------------------------------------------------------------------------------------ pipeline

@pytest.fixture(scope="module")
def svd_pair():
    module = build_tiny_svd_module(seed=0)
    return module, build_reference_pipeline(module)


def _run_both(module, pipe, image01, num_frames: int, steps: int, min_g: float, max_g: float, fps: int,
              motion: int, aug: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our sampler and diffusers' pipeline on the same image and seed; frames in [0, 1], ``(b, t, 3, h, w)``.

    The random numbers coincide by construction: both draw the conditioning-frame noise
    (``image.shape``) and then the initial latents (``(b, t, c, h, w)`` = our ``(b * t, c, h, w)``)
    from one generator seeded alike; both scale the latents by ``sqrt(1 + sigma_max^2)``."""
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.sampling.pipeline import LatentDiffusionSampler

    image = image01 if isinstance(image01, torch.Tensor) else torch.from_numpy(
        np.asarray(image01, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    h, w = image.shape[-2:]
    cfg = SamplerConfig(num_steps=steps, sigma_min=0.002, sigma_max=700.0, rho=7.0, min_guidance=min_g,
                        max_guidance=max_g)
    ours = LatentDiffusionSampler.from_model(module).image_to_video(image * 2 - 1, num_frames, fps_id=fps - 1,
                                                        motion_bucket_id=motion, cond_aug=aug, cfg=cfg, seed=seed)
    theirs = pipe(image01, height=h, width=w, num_frames=num_frames, num_inference_steps=steps,
                  min_guidance_scale=min_g, max_guidance_scale=max_g, fps=fps, motion_bucket_id=motion,
                  noise_aug_strength=aug, decode_chunk_size=num_frames, generator=torch.Generator().manual_seed(seed),
                  output_type="pt").frames
    return ours * 0.5 + 0.5, theirs


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(min_g=1.0, max_g=2.5, fps=7, motion=127, aug=0.02),   # svd defaults
    dict(min_g=1.5, max_g=3.0, fps=10, motion=60, aug=0.1),    # svd_xt guidance, other micro-conditioning
])
def test_image_to_video_parity_with_diffusers_pipeline(svd_pair, settings: dict) -> None:
    module, pipe = svd_pair
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ours, theirs = _run_both(module, pipe, image, num_frames=4, steps=4, seed=7, **settings)
    assert ours.shape == theirs.shape == (1, 4, 3, 64, 64)
    assert theirs.std() > 0.02  # a real, non-constant video
    assert (ours - theirs).abs().mean() <= 1e-3


@pytest.mark.slow
def test_image_to_video_parity_for_a_batch_of_two_images(svd_pair) -> None:
    """Two different images in one call: per-video conditioning, per-clip temporal decoding."""
    module, pipe = svd_pair
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    ours, theirs = _run_both(module, pipe, images, num_frames=3, steps=3, min_g=1.0, max_g=2.5, fps=7, motion=127,
                             aug=0.02, seed=3)
    assert ours.shape == theirs.shape == (2, 3, 3, 64, 64)
    assert (ours - theirs).abs().mean() <= 1e-3


CLIP_224 = dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], image_size=224, patch_size=32))


@pytest.fixture(scope="module")
def svd_pair_clip224():
    """A tower at SVD's CLIP size, so that both sides resize every conditioning image to 224."""
    module = build_tiny_svd_module(seed=0, clip_cfg=CLIP_224)
    return module, build_reference_pipeline(module)


def _pil(size: int, seed: int):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.slow
def test_image_to_video_parity_from_a_pil_image_through_clip_resizing(svd_pair_clip224) -> None:
    """A PIL image: diffusers resizes the CLIP input to 224 with its copy of SGM's kornia-style
    antialiased resize (``_resize_with_antialiasing``); ours must compute the same."""
    module, pipe = svd_pair_clip224
    ours, theirs = _run_both(module, pipe, _pil(64, 0), num_frames=3, steps=3, min_g=1.0, max_g=2.5, fps=7,
                             motion=127, aug=0.02, seed=11)
    assert ours.shape == theirs.shape == (1, 3, 3, 64, 64)
    assert (ours - theirs).abs().mean() <= 1e-3


@torch.no_grad()
@pytest.mark.parametrize("size", [64, 300])
def test_clip_token_of_a_pil_image_matches_diffusers(svd_pair_clip224, size: int) -> None:
    """The CLIP token alone: upsampled (64 -> 224) and antialiased-downsampled (300 -> 224)."""
    from vldm.conditioning.conditioner import Conditioner

    module, pipe = svd_pair_clip224
    clip = module.conditioner.embedders[0]
    assert isinstance(module.conditioner, Conditioner)
    pil = _pil(size, size)
    theirs = pipe._encode_image(pil, "cpu", 1, False)
    image = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    assert rel_err(clip(image), theirs) <= 1e-4


def test_maps_are_complete_at_released_size_on_meta() -> None:
    """The name maps at SVD-XT size (UNet 1.52 B, SD VAE with temporal decoder), strict both ways;
    built on the meta device, so nothing is allocated."""
    from vldm.nn.autoencoder import AutoencoderKL
    from vldm.nn.unet import UNet

    with torch.device("meta"):
        ours = UNet(**SVD_UNET)
        ref = diffusers.UNetSpatioTemporalConditionModel()  # diffusers' defaults are SVD's
        first = AutoencoderKL(**SD_VAE, use_quant_conv=False, decoder="temporal")
        cond = AutoencoderKL(**SD_VAE, use_quant_conv=True)
        vae = diffusers.AutoencoderKLTemporalDecoder(**diffusers_vae_config(**SD_VAE))
    expected = diffusers_unet_config(ours.config, 256, num_frames=25)
    assert expected == {k: ref.config[k] for k in expected}  # our derived config = diffusers' SVD defaults
    load_strict(ref, sgm_unet_to_diffusers(ours.state_dict()))
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters()) == 1_524_623_082
    load_strict(vae, sgm_vae_to_diffusers(sub_state(cond.state_dict(), ["encoder.", "quant_conv."]),
                                          sub_state(first.state_dict(), ["decoder."])))


@pytest.mark.slow
def test_sampling_benchmark_runs_and_reports_both_tools(tmp_path) -> None:
    """``bench/sample.py`` end to end at toy size, every case in this process."""
    import json

    from bench.sample import main

    out = tmp_path / "sample-cpu.json"
    threads = torch.get_num_threads()
    try:  # one thread: many tiny ops are at the mercy of a busy machine with more
        report = main(["--device", "cpu", "--size", "tiny", "--in-process", "--timing", "isolated", "--repeats", "1",
                       "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text())["ratios"].keys() == {"fast", "lean"}
    runs = {(r["tool"], r["setting"]): r for r in report["runs"]}
    assert set(runs) == {(t, s) for t in ("vldm", "diffusers") for s in ("fast", "lean")}
    for run in runs.values():
        assert run["error"] is None and run["detail"]["output_finite"]
        assert run["step_s"] > 0 and run["decode_s"] > 0 and run["unet_calls"] == 2  # 2 steps, cfg batched
    assert runs[("diffusers", "lean")]["decode_calls"] == 3  # decode_chunk_size=1, 3 frames
    assert runs[("vldm", "fast")]["detail"]["plan"]["cfg_mode"] == "batched"
