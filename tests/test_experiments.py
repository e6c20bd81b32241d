"""Experiment presets: the toy demo's stages resolve to their toy models, data and step counts; the
real-run presets (svd_finetune, svd_video_pretrain) compose from their README one-liners and build
their modules at full size on ``meta`` (no weights, no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from tests.helpers.configs import compose_train

SVD_UNET_PARAMETERS = 1_524_623_082  # SVD / SVD-XT UNet (the paper's "1.52B"; tests/test_svd_layout.py)

# The README one-liners (fake paths are fine: composing and building on meta read no file).
SVD_FINETUNE = ["experiment=svd_finetune", "stage.init_from=/models/svd_xt.safetensors",
                "data.train_shards='/data/clips/{000000..000999}.tar'"]
SVD_VIDEO_PRETRAIN = ["experiment=svd_video_pretrain", "stage.init_from=/models/v2-1_768-ema-pruned.safetensors",
                      "model.clip.weights=/models/open_clip_pytorch_model.bin",
                      "data.train_shards='/data/clips/{000000..009999}.tar'"]


def build_on_meta(cfg):
    """The stage's module as ``vldm.training.run.build_module`` builds it, without loading ``init_from``."""
    from vldm.training.run import stage_module

    with torch.device("meta"):
        return stage_module(cfg, trainable=cfg.stage.trainable)


def assert_full_size_svd_on_meta(module) -> None:
    assert sum(p.numel() for p in module.network.parameters()) == SVD_UNET_PARAMETERS
    assert all(p.is_meta for p in module.parameters()) and all(b.is_meta for b in module.buffers())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == SVD_UNET_PARAMETERS  # autoencoder and conditioner frozen


# --------------------------------------------------------------------------- the toy demo (make demo)

TOY_IMAGE_UNET = {"in_channels": 4, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "context_dim": 64, "video": False, "adm_in_channels": None}
TOY_VIDEO_UNET = {**TOY_IMAGE_UNET, "video": True, "adm_in_channels": 64}
TOY_I2V_UNET = {**TOY_IMAGE_UNET, "in_channels": 8, "video": True, "adm_in_channels": 96}
TOY_DATA = "/toy"
TOY_CASES = {  # what each `make demo` command resolves to
    "autoencoder": dict(
        overrides=["stage=autoencoder"], model="vldm.training.autoencoder_module.AutoencoderModule", network=None,
        data=("image", "/toy/images/train-*.tar", "/toy/images/val-*.tar", 16, None, None),
        steps=(500, 250, 500), init=(None, None)),
    "image": dict(
        overrides=["stage=image"], model="vldm.training.module.DiffusionModule", network=TOY_IMAGE_UNET,
        data=("image", "/toy/images/train-*.tar", "/toy/images/val-*.tar", 32, None, None),
        steps=(800, 400, 800), init=(None, "full")),
    "video": dict(
        overrides=["stage=video"], model="vldm.training.module.DiffusionModule", network=TOY_VIDEO_UNET,
        data=("video", "/toy/videos/train-*.tar", "/toy/videos/val-*.tar", 8, 6, None),
        steps=(380, 190, 380), init=("/r/runs/demo/image/model.safetensors", "inflate")),
    "hq": dict(
        overrides=["stage=hq"], model="vldm.training.module.DiffusionModule", network=TOY_VIDEO_UNET,
        data=("video", "/toy/videos/train-*.tar", "/toy/videos/val-*.tar", 8, 6, {"kind": "clean"}),
        steps=(100, 50, 100), init=("/r/runs/demo/video/model.safetensors", "full")),
    "i2v curated": dict(
        overrides=["paths.curated_dir=/curated", "stage=i2v", "data=curated_hq"],
        model="vldm.training.module.DiffusionModule", network=TOY_I2V_UNET,
        data=("video", "/curated/shards/clips-*.tar", "/curated/heldout/heldout-*.tar", 8, 6, None),  # base_filter
        steps=(400, 200, 400), init=("/r/runs/demo/hq/model.safetensors", "i2v")),
}


@pytest.mark.parametrize("case", list(TOY_CASES))
def test_toy_experiment_stage_resolves_as_the_demo(case: str) -> None:
    """`train.py experiment=toy stage=...` (the Makefile's commands): the stage's toy model, data and
    step counts (configs/toy_stage), the stage chain's init_from, and data=... winning over the preset."""
    want = TOY_CASES[case]
    cfg = compose_train(["experiment=toy", f"paths.data_dir={TOY_DATA}", "paths.root_dir=/r", *want["overrides"]])
    assert cfg.experiment_name == "demo" and cfg.paths.output_dir == f"/r/runs/demo/{cfg.stage.name}"
    assert cfg.model.module._target_ == want["model"]
    if want["network"] is None:
        assert cfg.model.module.autoencoder.ch == 32 and list(cfg.model.module.autoencoder.ch_mult) == [1, 1, 2]
    else:
        network = OmegaConf.to_container(cfg.model.diffusion.network, resolve=True)
        assert {k: network[k] for k in want["network"]} == want["network"]
    data = cfg.data
    assert data._target_ == "vldm.training.datamodule.ShardDataModule" and data.size == 32
    got = (data.kind, data.train_shards, data.val_shards, data.batch_size, data.get("num_frames"),
           OmegaConf.to_container(data.filter) if data.filter is not None else None)
    assert got == want["data"]
    assert (cfg.stage.max_steps, cfg.stage.checkpoint_every, cfg.stage.val_every) == want["steps"]
    assert (cfg.stage.init_from, cfg.stage.get("init_mode")) == want["init"]
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"


def test_bare_and_smoke_runs_use_the_toy_stages() -> None:
    """Without an experiment a stage runs the toy preset in runs/toy; smoke shortens any toy stage."""
    bare = compose_train(["paths.root_dir=/r"])
    assert (bare.stage.name, bare.experiment_name, bare.stage.max_steps) == ("image", "toy", 800)
    assert bare.paths.output_dir == "/r/runs/toy/image" and bare.model.diffusion.network.video is False
    video = compose_train(["stage=video"])
    assert video.model.diffusion.network.video is True and video.data.num_frames == 6
    smoke = compose_train(["stage=autoencoder", "experiment=smoke"])
    assert (smoke.experiment_name, smoke.stage.max_steps, smoke.stage.checkpoint_every, smoke.data.batch_size) == (
        "smoke", 4, 2, 2)
    assert smoke.model.module._target_ == "vldm.training.autoencoder_module.AutoencoderModule"


def test_command_line_model_and_data_win_over_a_toy_stage() -> None:
    """The toy presets override model/data from a stage's (not interpolated) defaults list, so any model
    config, also one with its own defaults-list overrides (svd_image_decoder), can replace them."""
    cfg = compose_train(["stage=hq", "model=svd_image_decoder", "data=webdataset"])
    assert cfg.model.name == "svd_image_decoder" and cfg.model.diffusion.first_stage.use_quant_conv is True
    assert cfg.data.num_frames == 14 and cfg.stage.max_steps == 100


# --------------------------------------------------------------------------- svd_finetune

def test_svd_finetune_resolves_to_the_576x1024_fine_tuning_run() -> None:
    cfg = compose_train([*SVD_FINETUNE, "paths.root_dir=/r"])
    assert cfg.experiment_name == "svd_finetune" and cfg.paths.output_dir == "/r/runs/svd_finetune/hq"
    assert (cfg.stage.name, cfg.stage.init_mode, cfg.stage.init_from) == ("hq", "full", "/models/svd_xt.safetensors")
    assert cfg.model.name == "svd_xt" and cfg.model.diffusion.network.gradient_checkpointing is True
    sigma = cfg.model.module.sigma_sampler
    assert sigma._target_.endswith("EDMSigmaSampler") and (sigma.p_mean, sigma.p_std) == (1.0, 1.6)
    assert cfg.model.module.lr == pytest.approx(1e-5)
    assert cfg.data._target_ == "vldm.training.datamodule.ShardDataModule" and cfg.data.kind == "video"
    assert list(cfg.data.size) == [576, 1024] and cfg.data.num_frames == 25
    assert cfg.data.train_shards == "/data/clips/{000000..000999}.tar"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"
    assert cfg.stage.max_steps >= 10_000 and cfg.stage.checkpoint_every <= cfg.stage.max_steps
    # the 14-frame SVD: only the model (and its file) change
    svd = compose_train([*SVD_FINETUNE, "model=svd", "stage.init_from=/models/svd.safetensors"])
    assert svd.model.name == "svd" and svd.data.num_frames == 14 and list(svd.data.size) == [576, 1024]


def test_real_run_presets_need_the_file_they_start_from() -> None:
    for preset in ("svd_finetune", "svd_video_pretrain"):
        cfg = compose_train([f"experiment={preset}"])
        with pytest.raises(InterpolationToMissingValueError, match="paths.pretrained"):
            cfg.stage.init_from
        with pytest.raises(MissingMandatoryValue, match="train_shards"):
            cfg.data.train_shards


@pytest.mark.slow
def test_svd_finetune_module_builds_at_full_size_on_meta() -> None:
    cfg = compose_train(SVD_FINETUNE)
    module = build_on_meta(cfg)
    assert_full_size_svd_on_meta(module)
    assert module.network.config.gradient_checkpointing is True
    assert (module.sigma_sampler.p_mean, module.sigma_sampler.p_std) == (1.0, 1.6)


# --------------------------------------------------------------------------- svd_video_pretrain

def test_svd_video_pretrain_resolves_to_the_256x384_video_stage() -> None:
    cfg = compose_train([*SVD_VIDEO_PRETRAIN, "paths.root_dir=/r"])
    assert cfg.experiment_name == "svd_video_pretrain" and cfg.paths.output_dir == "/r/runs/svd_video_pretrain/video"
    assert (cfg.stage.name, cfg.stage.init_mode) == ("video", "inflate")
    assert cfg.stage.init_from == "/models/v2-1_768-ema-pruned.safetensors"
    assert cfg.model.name == "svd_image_decoder" and cfg.model.diffusion.network.video is True
    assert cfg.model.diffusion.first_stage.use_quant_conv is True and cfg.model.diffusion.first_stage.decoder == "image"
    assert cfg.model.diffusion.conditioner.embedders[3].embedder.encoder is None  # shares the first stage
    assert cfg.model.diffusion.network.gradient_checkpointing is True
    assert list(cfg.data.size) == [256, 384] and cfg.data.num_frames == 14
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"
    assert cfg.stage.max_steps >= 10_000


@pytest.mark.slow
def test_svd_video_pretrain_module_builds_at_full_size_on_meta() -> None:
    cfg = compose_train([*SVD_VIDEO_PRETRAIN[:2], *SVD_VIDEO_PRETRAIN[3:]])  # no CLIP file needed on meta
    module = build_on_meta(cfg)
    assert_full_size_svd_on_meta(module)
    assert module.conditioner.embedders[3].encoder is module.first_stage_model


def test_svd_video_pretrain_inflates_an_sd21_file_in_the_ldm_layout(tmp_path: Path) -> None:
    """At tiny size: the preset's model takes an SD 2.1 file (LDM layout) by inflate: UNet weights
    copied, the input conv widened with zeros, the autoencoder loaded strictly, and the
    conditioning-frame encoder is that autoencoder."""
    from tests.helpers.models import TINY_SD21, builder, ldm_file, randomize
    from vldm.training.run import build_module

    image = randomize(builder(compose_train(TINY_SD21).model)()).eval()
    path = ldm_file(image, tmp_path / "v2-1_768-ema-pruned.safetensors")
    tiny = [o for o in TINY_SD21 if o.startswith(("model.diffusion.network.", "model.diffusion.first_stage."))]
    clip = TINY_SD21[-1].split("=", 1)[1]
    cfg = compose_train(["experiment=svd_video_pretrain", f"stage.init_from={path}", *tiny,
                         "model.diffusion.conditioner.embedders.0.embedder.arch=null",
                         f"+model.diffusion.conditioner.embedders.0.embedder.model_cfg={clip}"])
    video = build_module(cfg, tmp_path / "run")
    ours, theirs = video.diffusion.state_dict(), image.state_dict()
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    for key, value in theirs.items():
        if key.startswith(("model.diffusion_model.", "first_stage_model.")) and key != conv:
            assert torch.equal(ours[key], value), key
    assert ours[conv].shape[1] == 8 and torch.equal(ours[conv][:, :4], theirs[conv]) and not ours[conv][:, 4:].any()
    assert video.conditioner.embedders[3].encoder is video.first_stage_model


# --------------------------------------------------------------------------- svd_t2v (the text-to-video base model)

# SVD's UNet less the conditioning-frame latent's input-conv weights (320 x 4 x 3 x 3 = 11,520) and the
# cond_aug columns of the vector embedding (1280 x 256 = 327,680); test_svd_t2v_module_builds_... derives it.
SVD_T2V_UNET_PARAMETERS = 1_524_283_882
SVD_T2V_VIDEO_PRETRAIN = ["experiment=svd_t2v_video_pretrain",
                          "stage.init_from=/models/v2-1_768-ema-pruned.safetensors",
                          "model.clip.weights=/models/open_clip_pytorch_model.bin",
                          "data.train_shards='/data/clips/{000000..009999}.tar'"]
SVD_T2V_FINETUNE = ["experiment=svd_t2v_finetune", "data.train_shards='/data/hq_clips/{000000..000999}.tar'"]


def assert_svd_t2v_model(cfg) -> None:
    """The text-to-video base model: SVD's video UNet on the noisy latent alone, text context, fps + motion."""
    model = cfg.model
    assert model.name == "svd_t2v" and model.diffusion.image_to_video is False
    net = model.diffusion.network
    assert (net.video, net.in_channels, net.context_dim, net.adm_in_channels) == (True, 4, 1024, 2 * model.vector_dim)
    assert model.vector_dim == 256 and net.gradient_checkpointing is True
    assert model.diffusion.first_stage.use_quant_conv is True and model.diffusion.first_stage.decoder == "image"
    conditioner = model.diffusion.conditioner
    assert [e.input_key for e in conditioner.embedders] == ["txt", "fps_id", "motion_bucket_id"]
    text = conditioner.embedders[0]
    assert text.embedder._target_.endswith("OpenCLIPTextEmbedder") and text.ucg_rate == pytest.approx(0.1)
    assert (text.embedder.arch, text.embedder.layer) == ("ViT-H-14", "penultimate")
    assert [e.embedder.outdim for e in conditioner.embedders[1:]] == [256, 256]
    assert "cond_frame_encoder" not in model and model.diffusion.uncond_text == "zero"
    sampler = model.diffusion.sampler
    assert sampler.min_guidance == sampler.max_guidance == pytest.approx(7.5)


def test_svd_t2v_video_pretrain_resolves_to_the_256x384_text_to_video_stage() -> None:
    cfg = compose_train([*SVD_T2V_VIDEO_PRETRAIN, "paths.root_dir=/r"])
    assert cfg.paths.output_dir == "/r/runs/svd_t2v_video_pretrain/video"
    assert (cfg.stage.name, cfg.stage.init_mode) == ("video", "inflate")
    assert cfg.stage.init_from == "/models/v2-1_768-ema-pruned.safetensors"
    assert_svd_t2v_model(cfg)
    assert cfg.model.diffusion.conditioner.embedders[0].embedder.weights == "/models/open_clip_pytorch_model.bin"
    sampling = OmegaConf.to_container(cfg.model.sampling)
    assert {k: sampling[k] for k in ("height", "width", "num_frames", "fps", "motion_bucket_id")} == {
        "height": 256, "width": 384, "num_frames": 14, "fps": 7, "motion_bucket_id": 127}
    assert cfg.data.kind == "video" and list(cfg.data.size) == [256, 384] and cfg.data.num_frames == 14
    assert cfg.data.train_shards == "/data/clips/{000000..009999}.tar"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"
    assert cfg.stage.max_steps >= 10_000 and cfg.model.module.lr == pytest.approx(1e-4)


def test_svd_t2v_finetune_resolves_to_the_576x1024_stage_from_the_stage_ii_run() -> None:
    cfg = compose_train([*SVD_T2V_FINETUNE, "paths.root_dir=/r"])
    assert cfg.paths.output_dir == "/r/runs/svd_t2v_finetune/hq"
    assert (cfg.stage.name, cfg.stage.init_mode) == ("hq", "full")
    assert cfg.stage.init_from == "/r/runs/svd_t2v_video_pretrain/video/model.safetensors"  # stage II writes it
    assert_svd_t2v_model(cfg)
    assert (cfg.model.sampling.height, cfg.model.sampling.width, cfg.model.sampling.num_frames) == (576, 1024, 14)
    assert list(cfg.data.size) == [576, 1024] and cfg.data.num_frames == 14
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.module.lr == pytest.approx(1e-5)
    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"
    sigma = cfg.model.module.sigma_sampler
    assert sigma._target_.endswith("EDMSigmaSampler") and (sigma.p_mean, sigma.p_std) == (1.0, 1.6)
    other = compose_train([*SVD_T2V_FINETUNE, "stage.init_from=/runs/t2v/video"])
    assert other.stage.init_from == "/runs/t2v/video"


def test_svd_t2v_presets_need_their_stage_i_file_and_shards() -> None:
    """Stage II refuses to start without the stage-I file (it holds the UNet, autoencoder and text tower)."""
    cfg = compose_train(["experiment=svd_t2v_video_pretrain"])
    with pytest.raises(InterpolationToMissingValueError, match="paths.pretrained"):
        cfg.stage.init_from
    for preset in ("svd_t2v_video_pretrain", "svd_t2v_finetune"):
        with pytest.raises(MissingMandatoryValue, match="train_shards"):
            compose_train([f"experiment={preset}"]).data.train_shards
    from vldm.training.cluster import preflight

    problems, _ = preflight(compose_train(["experiment=svd_t2v_video_pretrain", "paths.root_dir=/nonexistent"]))
    assert any("paths.pretrained" in p for p in problems), problems


def unet_shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.network.state_dict().items()}


@pytest.mark.slow
def test_svd_t2v_module_builds_at_full_size_on_meta() -> None:
    """svd_t2v's UNet is SVD's: the same keys and shapes but the input conv (4 channels, not 8) and the
    vector embedding's first layer (fps and motion bucket, not cond_aug): fewer parameters by exactly those."""
    svd = build_on_meta(compose_train(["model=svd"]))
    conv, vector = "input_blocks.0.0.weight", "label_emb.0.0.weight"
    svd_shapes = unet_shapes(svd)
    out, _, kh, kw = svd_shapes[conv]
    expected = SVD_UNET_PARAMETERS - out * 4 * kh * kw - svd_shapes[vector][0] * 256
    assert expected == SVD_T2V_UNET_PARAMETERS
    module = build_on_meta(compose_train([*SVD_T2V_VIDEO_PRETRAIN[:2], "model.clip.weights=null",
                                          *SVD_T2V_VIDEO_PRETRAIN[3:]]))  # no CLIP file needed on meta
    assert sum(p.numel() for p in module.network.parameters()) == SVD_T2V_UNET_PARAMETERS
    assert all(p.is_meta for p in module.parameters()) and all(b.is_meta for b in module.buffers())
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == SVD_T2V_UNET_PARAMETERS
    shapes = unet_shapes(module)
    assert set(shapes) == set(svd_shapes) and len(shapes) == 1_428
    assert {k for k in shapes if shapes[k] != svd_shapes[k]} == {conv, vector}
    assert (shapes[conv], shapes[vector]) == ((320, 4, 3, 3), (1280, 512))
    assert module.network.config.gradient_checkpointing is True and module.diffusion.image_to_video is False
    assert [type(e).__name__ for e in module.conditioner.embedders] == [
        "OpenCLIPTextEmbedder", "ConcatTimestepEmbedderND", "ConcatTimestepEmbedderND"]


@pytest.mark.slow
def test_sd21_unet_fits_svd_t2v_at_full_size() -> None:
    """Every weight of SD 2.1's UNet has its place, of the same shape, in svd_t2v's (no widened input conv);
    svd_t2v's other weights are the temporal layers and label_emb, which inflate starts as identities / zero."""
    from tests.helpers.models import TINY_SD21
    from vldm.nn.inflate import temporal_parameter_names

    sd21 = build_on_meta(compose_train(TINY_SD21[:1]))
    t2v = build_on_meta(compose_train([*SVD_T2V_VIDEO_PRETRAIN[:2], "model.clip.weights=null",
                                       *SVD_T2V_VIDEO_PRETRAIN[3:]]))
    image, video = unet_shapes(sd21), unet_shapes(t2v)
    assert all(video[k] == shape for k, shape in image.items())
    new = set(video) - set(image)
    assert new == temporal_parameter_names(t2v.network) | {k for k in video if k.startswith("label_emb.")}
    assert (len(image), len(new), len(video)) == (686, 742, 1_428)


def test_svd_t2v_video_pretrain_inflates_an_sd21_file_in_the_ldm_layout(tmp_path: Path) -> None:
    """At tiny size: the preset's model takes an SD 2.1 file (LDM layout) by inflate, strictly: every UNet
    weight copied unchanged (the input conv too: 4 channels), temporal layers and label_emb new (its
    last layer zero), the autoencoder and the text tower (cond_stage_model.*) loaded from it; a step on
    captioned clips trains label_emb."""
    from tests.helpers.models import TINY_SD21, builder, ldm_file, randomize
    from vldm.nn.inflate import temporal_parameter_names
    from vldm.training.run import build_module

    image = randomize(builder(compose_train(TINY_SD21).model)()).eval()
    path = ldm_file(image, tmp_path / "v2-1_768-ema-pruned.safetensors")
    tower = image.conditioner.embedders[0].model.state_dict()
    tiny = [o for o in TINY_SD21 if o.startswith(("model.diffusion.network.", "model.diffusion.first_stage."))]
    cfg = compose_train(["experiment=svd_t2v_video_pretrain", f"paths.pretrained={path}",
                         TINY_SD21[-1], *tiny])  # TINY_SD21[-1]: model.clip.model_cfg, the tiny tower
    video = build_module(cfg, tmp_path / "run")
    ours, theirs = video.diffusion.state_dict(), image.state_dict()
    unet = "model.diffusion_model."
    for key, value in theirs.items():
        if key.startswith((unet, "first_stage_model.")):
            assert torch.equal(ours[key], value), key
    new = {k for k in ours if k.startswith(unet)} - set(theirs)
    label_emb = {k for k in new if k.startswith(f"{unet}label_emb.")}
    assert new == {unet + k for k in temporal_parameter_names(video.network)} | label_emb and len(label_emb) == 4
    assert not video.network.label_emb[0][2].weight.any() and not video.network.label_emb[0][2].bias.any()
    for key, value in tower.items():
        assert torch.equal(video.conditioner.embedders[0].model.state_dict()[key], value), key
    # it trains on what the shards give: captioned clips with their fps and motion bucket
    batch = {"video": torch.rand(2, 3, 3, 32, 32) * 2 - 1, "txt": ["a cat", "a dog"], "fps_id": torch.tensor([6, 3]),
             "motion_bucket_id": torch.tensor([127, 30])}
    loss = video.train().diffusion_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and video.network.label_emb[0][2].weight.grad.abs().sum() > 0
