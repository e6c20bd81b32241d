"""SD 2.1 (768-v) as a stage-1 model: sizes at full scale, the LDM checkpoint layout at tiny scale
(text-tower prefix, schedule buffers verified then dropped, strict keys), text-to-image sampling, and
where the OpenCLIP weights come from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from tests.helpers.configs import compose_train
from tests.helpers.models import builder, ldm_file, meta_shapes, randomize, save_state, tiny_sd21_cfg, tiny_i2v_cfg
from vldm.sampling.pipeline import LatentDiffusionSampler
from vldm.checkpoints.ldm_layout import SCHEDULE_BUFFERS, ldm_schedule, to_ldm_key
from vldm.checkpoints.official import load_pretrained
from vldm.io.safe_load import CheckpointError
from vldm.diffusion.denoiser import DiscreteDenoiser, VScaling
from vldm.diffusion.discretization import ddpm_sigmas
from vldm.checkpoints.load import load_model_file


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory):
    """(tiny sd21 model config, a random module of it, its LDM-layout file)."""
    cfg = tiny_sd21_cfg()
    torch.manual_seed(0)
    module = randomize(builder(cfg)()).eval()
    return cfg, module, ldm_file(module, tmp_path_factory.mktemp("sd21") / "tiny_v2-1_768.safetensors")


def test_full_size_matches_sd21() -> None:
    """Built on meta at full size: SD 2.1's parameter counts (UNet 865,910,724; VAE 83,653,863), the
    OpenCLIP ViT-H-14 text tower without ``visual``, and the v-prediction 1000-level denoiser."""
    cfg = compose_train(["model=sd21"]).model
    shapes = meta_shapes(builder(cfg))

    def count(prefix: str) -> int:
        return sum(int(torch.Size(s).numel()) for k, s in shapes.items() if k.startswith(prefix))

    assert count("model.diffusion_model.") == 865_910_724
    assert count("first_stage_model.") == 83_653_863
    text = {k for k in shapes if k.startswith("conditioner.embedders.0.model.")}
    assert len(text) == 6 + 24 * 12 and not any(".visual." in k for k in text)
    assert shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear proj
    assert "model.diffusion_model.label_emb.0.0.weight" not in shapes
    assert shapes["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    assert cfg.checkpoint_layout == "ldm" and cfg.diffusion.scale_factor == pytest.approx(0.18215)
    denoiser = instantiate(cfg.diffusion.denoiser)
    assert isinstance(denoiser, DiscreteDenoiser) and isinstance(denoiser.scaling, VScaling)
    assert denoiser.sigmas[0] == pytest.approx(0.0292, abs=1e-4)
    assert denoiser.sigmas[-1] == pytest.approx(14.6146, abs=1e-3)


def test_full_size_layout_is_what_diffusers_reads_as_sd2() -> None:
    """diffusers' single-file conversion (an independent reader of the LDM layout) maps our full-size
    UNet and VAE keys onto its SD 2.x models with nothing missing and nothing left over."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    shapes = meta_shapes(builder(compose_train(["model=sd21"]).model))
    ckpt = {to_ldm_key(k): torch.empty(s, device="meta") for k, s in shapes.items()}
    assert sfu.infer_diffusers_model_type(ckpt) == "v2"
    original = {"model": {"params": {
        "scale_factor": 0.18215,
        "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                                   "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
                                   "channel_mult": [1, 2, 4, 4], "num_head_channels": 64,
                                   "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024}},
        "first_stage_config": {"params": {"ddconfig": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                                       "in_channels": 3, "out_ch": 3, "z_channels": 4,
                                                       "resolution": 256}}}}}}
    for make_config, convert, cls in (
            (sfu.create_unet_diffusers_config_from_ldm, sfu.convert_ldm_unet_checkpoint, UNet2DConditionModel),
            (sfu.create_vae_diffusers_config_from_ldm, sfu.convert_ldm_vae_checkpoint, AutoencoderKL)):
        config = make_config(original, ckpt)
        converted = convert(ckpt, config)
        with torch.device("meta"):
            reference = cls(**config)
        theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in converted.items()}
        assert ours == theirs, (sorted(set(ours) ^ set(theirs))[:8])


def test_tiny_ldm_file_loads_strictly_and_samples(tiny_sd) -> None:
    cfg, reference, path = tiny_sd
    module = load_model_file(cfg, path)  # the sample.py path: model=sd21 checkpoint=FILE (checkpoint_layout: ldm)
    own = module.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(own[key], value), key
    assert float(module.scale_factor) == pytest.approx(0.18215)
    sampler_cfg = module.sampler_cfg
    images = LatentDiffusionSampler.from_model(module).text_to_image(["a red ball", "a blue cube"], 32, 32, sampler_cfg, seed=3)
    expected = LatentDiffusionSampler.from_model(reference).text_to_image(["a red ball", "a blue cube"], 32, 32, sampler_cfg,
                                                              seed=3)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.equal(images, expected) and images.std() > 0.01
    half = load_pretrained(builder(cfg), path, dtype=torch.float16, layout="ldm", keep_fp32=["first_stage_model"])
    assert half.network.input_blocks[0][0].weight.dtype == torch.float16
    assert half.first_stage_model.encoder.conv_in.weight.dtype == torch.float32


def test_wrong_schedule_means_a_wrong_model(tiny_sd, tmp_path: Path) -> None:
    cfg, module, _ = tiny_sd
    linear = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)  # DDPM's linear betas, not SD's
    sigmas = ((1 - torch.cumprod(1 - linear, 0)) / torch.cumprod(1 - linear, 0)).sqrt()
    path = ldm_file(module, tmp_path / "other.safetensors", schedule=ldm_schedule(sigmas))
    with pytest.raises(CheckpointError, match=r"DDPM schedule differs .*betas\[.*different model"):
        load_pretrained(builder(cfg), path, layout="ldm")
    assert set(ldm_schedule(ddpm_sigmas())) == set(SCHEDULE_BUFFERS)


def test_anything_else_in_an_ldm_file_is_unexpected(tiny_sd, tmp_path: Path) -> None:
    cfg, module, _ = tiny_sd
    path = ldm_file(module, tmp_path / "ema.safetensors",
                    extra={f"model_ema.diffusion_modelout{i}weight": torch.zeros(1) for i in range(3)})
    with pytest.raises(CheckpointError) as err:
        load_pretrained(builder(cfg), path, layout="ldm")
    assert "unexpected keys: model_ema.diffusion_modelout0weight" in str(err.value)
    assert "EMA copy" in str(err.value) and "ema-pruned" in str(err.value)


def test_sd_file_into_a_video_config_says_what_it_is(tiny_sd) -> None:
    _, _, path = tiny_sd
    with pytest.raises(CheckpointError) as err:
        load_pretrained(builder(tiny_i2v_cfg()), path)
    msg = str(err.value)
    assert "missing keys: conditioner.embedders.0.open_clip.model." in msg
    assert "unexpected keys: alphas_cumprod" in msg
    assert "LDM layout of SD 2.x" in msg and "checkpoint_layout: ldm" in msg
    assert "image-to-video model of the SVD architecture" in msg


def test_video_file_into_the_sd21_config_says_what_it_is(tiny_sd, tmp_path: Path) -> None:
    cfg = tiny_sd[0]
    video = builder(tiny_i2v_cfg())()
    path = save_state(video.state_dict(), tmp_path / "video.safetensors")
    with pytest.raises(CheckpointError, match=r"The file looks like an image-to-video model of the SVD architecture"):
        load_pretrained(builder(cfg), path, layout="ldm")


def _open_clip_file(module, path: Path, shift: float = 0.0) -> Path:
    """A separate OpenCLIP file whose text tower is ``module``'s (+ ``shift``), with a visual tower."""
    text = {k[len("conditioner.embedders.0.model."):]: v + shift for k, v in module.state_dict().items()
            if k.startswith("conditioner.embedders.0.model.")}
    text["visual.proj"] = torch.zeros(64, 64)
    return save_state(text, path)


def test_openclip_file_must_agree_with_the_checkpoint_tower(tiny_sd, tmp_path: Path) -> None:
    cfg, module, path = tiny_sd
    same = _open_clip_file(module, tmp_path / "open_clip_pytorch_model.safetensors")
    other = _open_clip_file(module, tmp_path / "other_clip.safetensors", shift=0.5)
    loaded = load_model_file(tiny_sd21_cfg(f"model.clip_weights={same}"), path)
    assert torch.equal(loaded.conditioner.embedders[0].model.text_projection,
                       module.conditioner.embedders[0].model.text_projection)
    with pytest.raises(CheckpointError, match=r"other_clip\.safetensors disagrees with the checkpoint's "
                                              r"conditioner\.embedders\.0 weights.*take precedence"):
        load_model_file(tiny_sd21_cfg(f"model.clip_weights={other}"), path)


def test_building_without_openclip_weights_names_the_file() -> None:
    cfg = compose_train(["model=sd21", "model.clip_weights=null"]).model
    with pytest.raises(InstantiationException, match=r"open_clip_pytorch_model\.bin.*laion/CLIP-ViT-H-14-laion2B"):
        instantiate(cfg.diffusion.conditioner)
    missing = compose_train(["model=sd21", "model.clip_weights=/nowhere/open_clip_pytorch_model.bin"]).model
    with pytest.raises(InstantiationException, match=r"/nowhere/open_clip_pytorch_model\.bin.*laion/CLIP-ViT-H-14"):
        instantiate(missing.diffusion.conditioner)


def test_stage_one_starts_from_an_ldm_file(tiny_sd, tmp_path: Path) -> None:
    """``stage.init_from=v2-1_768-ema-pruned.safetensors``: the training path reads the LDM layout too."""
    from vldm.checkpoints.stage_weights import load_stage_weights

    cfg, reference, path = tiny_sd
    module = builder(cfg)()
    load_stage_weights(module, path, mode="full")
    own = module.state_dict()
    assert all(torch.equal(own[k], v) for k, v in reference.state_dict().items())
    linear = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    sigmas = ((1 - torch.cumprod(1 - linear, 0)) / torch.cumprod(1 - linear, 0)).sqrt()
    other = ldm_file(reference, tmp_path / "other.safetensors", schedule=ldm_schedule(sigmas))
    with pytest.raises(CheckpointError, match="different model"):
        load_stage_weights(builder(cfg)(), other, mode="full")


def test_sd21_unconditional_pass_embeds_the_empty_prompt(tiny_sd) -> None:
    """SD 2.x (LDM) guides against the embedding of "" — not zeros, as SGM-trained models do."""
    cfg, module, _ = tiny_sd
    sampler = LatentDiffusionSampler.from_model(module)
    assert sampler.uncond_text == "empty"
    uncond = sampler.unconditional({"txt": ["a red ball"]})
    assert torch.allclose(uncond["crossattn"], module.conditioner({"txt": [""]})["crossattn"])
    assert uncond["crossattn"].abs().sum() > 0
