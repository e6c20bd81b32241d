"""The memory planner on SVD-XT-size statistics (576 x 1024, 25 frames), built on the meta device."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vldm.sampling.memory_plan import MemoryPlan, ModelMemoryStats, parse_memory, plan_memory

GB = 10**9
LATENT = (72, 128)  # 576 x 1024 pixels / 8


@pytest.fixture(scope="module")
def svd_xt() -> ModelMemoryStats:
    from vldm.conditioning.conditioner import Conditioner, EmbedderSpec
    from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder
    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND, ConditioningFrameEncoder
    from vldm.nn.autoencoder import AutoencoderKL
    from vldm.nn.unet import UNet

    with torch.device("meta"):
        unet = UNet(in_channels=8, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                    attention_resolutions=(4, 2, 1), num_head_channels=64, context_dim=1024, adm_in_channels=768,
                    video=True).half()
        first_stage = AutoencoderKL(use_quant_conv=False, decoder="temporal")
        scalar = [EmbedderSpec(ConcatTimestepEmbedderND(256), k) for k in ("fps_id", "motion_bucket_id", "cond_aug")]
        conditioner = Conditioner([EmbedderSpec(OpenCLIPImageEmbedder(arch="ViT-H-14"), "cond_frames_without_noise"),
                                   *scalar[:2], EmbedderSpec(ConditioningFrameEncoder(AutoencoderKL()), "cond_frames"),
                                   scalar[2]])
    return ModelMemoryStats.from_module(SimpleNamespace(network=unet, conditioner=conditioner, first_stage=first_stage))


def plan(stats: ModelMemoryStats, budget: str | None, **kwargs) -> MemoryPlan:
    defaults = dict(num_frames=25, latent_hw=LATENT, batch=1, guided=True, device="cuda")
    return plan_memory(parse_memory(budget), stats, **{**defaults, **kwargs})


def test_weight_counts_match_the_released_layout(svd_xt: ModelMemoryStats) -> None:
    p = svd_xt.params  # totals of tests/data/svd_xt_reference_keys.json.gz (the sgm reference's state dict)
    assert p["unet"] + p["unet_rest"] == 1_524_623_082
    assert p["image_encoder"] == 683_800_065
    assert p["vae_decoder"] == 63_579_183
    assert p["cond_frame_encoder"] == 34_163_592  # only the encoder of the conditioner's VAE copy runs
    assert 0.1 * p["unet"] < p["unet_block_max"] < 0.15 * p["unet"]
    assert svd_xt.weight_bytes(torch.float16)["image_encoder"] == 2 * 683_800_065
    assert svd_xt.temporal_radius == 29 and svd_xt.downsample_factor == 8 and svd_xt.dtype == torch.float16


def test_activation_model_scales_with_frames_and_chunks(svd_xt: ModelMemoryStats) -> None:
    px = LATENT[0] * LATENT[1]
    batched = svd_xt.unet_activation_elements(50, px, 25)
    assert svd_xt.unet_activation_elements(25, px, 25) == pytest.approx(batched / 2)
    assert svd_xt.unet_activation_elements(50, px, 25, ff_chunk=8192) < 0.7 * batched
    scores = svd_xt.unet_activation_elements(50, px, 25, efficient_attention=False)
    assert scores > 5 * batched  # 5 heads x 9216^2 scores per frame at full resolution
    assert svd_xt.unet_activation_elements(50, px, 25, attention_chunk=4096, efficient_attention=False) < 1.1 * batched
    # one 576 x 1024 frame through the decoder in fp32: gigabytes (why the official demo fails on 24 GB)
    assert 1 * GB < svd_xt.decode_activation_elements(1, px) * 4 < 5 * GB


def test_plans_degrade_in_order_as_the_budget_shrinks(svd_xt: ModelMemoryStats) -> None:
    big = plan(svd_xt, "80GB")
    assert (big.unet, big.image_encoder, big.vae_decoder, big.cfg_mode) == ("device", "device", "device", "batched")
    assert big.ff_chunk is None and big.attention_chunk is None and big.decode_chunk_size >= 14
    assert big.dtype == "fp16" and big.vae_dtype == "fp32"

    card = plan(svd_xt, "24GB")  # the official demo's out-of-memory case
    assert (card.unet, card.vae_decoder, card.cfg_mode, card.ff_chunk) == ("device", "device", "batched", None)
    assert 2 <= card.decode_chunk_size < big.decode_chunk_size and card.decode_overlap >= 1

    mid = plan(svd_xt, "12GB")
    assert mid.cfg_mode == "sequential" and mid.unet == "device"
    assert (mid.image_encoder, mid.cond_frame_encoder, mid.vae_decoder) == ("stream", "stream", "stream")
    assert mid.vae_dtype == "fp32"

    small = plan(svd_xt, "8GB")
    assert small.unet == "device" and small.cfg_mode == "sequential" and small.ff_chunk is not None
    assert small.vae_dtype == "fp16" and small.decode_chunk_size == 2 and small.decode_overlap == 0

    tiny = plan(svd_xt, "4GB")
    assert tiny.unet == "stream" and tiny.dtype == "fp16" and tiny.vae_dtype == "fp16"
    for p, budget in [(big, "80GB"), (card, "24GB"), (mid, "12GB"), (small, "8GB"), (tiny, "4GB")]:
        assert p.estimated_peak_bytes <= 0.9 * parse_memory(budget)
        assert p.budget_bytes == parse_memory(budget)


def test_no_plan_fits_is_a_clear_error(svd_xt: ModelMemoryStats) -> None:
    with pytest.raises(MemoryError, match=r"no sampling plan fits in 1\.86 GiB.*leanest needs about") as err:
        plan(svd_xt, "2GB")
    assert "UNet: stream" in str(err.value) and "larger max_memory" in str(err.value)


def test_wanted_dtype_guidance_and_attention_kernel(svd_xt: ModelMemoryStats) -> None:
    assert plan(svd_xt, "24GB", dtype=torch.float32).dtype == "fp32"
    assert plan(svd_xt, "8GB", dtype="fp32").dtype == "fp16"  # fp32 fits nowhere in 8 GB: the last resort
    assert plan(svd_xt, "80GB", guided=False).cfg_mode == "none"
    no_flash = plan(svd_xt, "40GB", efficient_attention=False)  # 5 x 9216^2 scores per frame: chunk them
    assert no_flash.attention_chunk is not None and no_flash.cfg_mode == "sequential"
    shorter = plan(svd_xt, "24GB", num_frames=14)
    assert shorter.decode_chunk_size is None or shorter.decode_chunk_size >= plan(svd_xt, "24GB").decode_chunk_size


def test_no_budget_means_free_device_memory_or_no_limit(svd_xt: ModelMemoryStats,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fastest = plan(svd_xt, None, device="cpu")
    assert fastest.budget_bytes is None and fastest.decode_chunk_size is None and fastest.cfg_mode == "batched"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 24 * 2**30))
    on_gpu = plan(svd_xt, None, device="cuda")
    assert on_gpu.budget_bytes == 10 * 2**30 - 512 * 2**20 and on_gpu.estimated_peak_bytes <= 0.9 * on_gpu.budget_bytes


def test_describe_names_every_choice(svd_xt: ModelMemoryStats) -> None:
    text = plan(svd_xt, "8GB").describe()
    for words in ("budget 7.45 GiB", "fp16 (VAE fp16)", "UNet: device", "VAE decoder: stream", "sequential",
                  "feed-forward:", "2 frames per chunk, 0 overlapping", "denoising:"):
        assert words in text
    assert set(MemoryPlan().as_dict()) >= {"dtype", "unet", "cfg_mode", "decode_chunk_size", "estimated_peak_bytes"}


@pytest.mark.parametrize("text,size", [("8GB", 8 * 10**9), ("8GiB", 8 * 2**30), ("8G", 8 * 2**30),
                                       ("512MB", 512 * 10**6), ("512 mib", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                       (123456, 123456), ("2048", 2048), (None, None), ("auto", None)])
def test_parse_memory(text, size) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["8 parsecs", "GB", "-1GB", "0", "8GB!"])
def test_parse_memory_refuses_nonsense(bad) -> None:
    with pytest.raises(ValueError):
        parse_memory(bad)


def test_plan_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="placement of unet"):
        MemoryPlan(unet="gpu")
    with pytest.raises(ValueError, match="cfg_mode"):
        MemoryPlan(cfg_mode="parallel")
    with pytest.raises(ValueError, match="dtype"):
        MemoryPlan(dtype="fp8")
