"""Export of a vldm video run as one SVD-layout safetensors file (+ an sgm inference yaml), and back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers.configs import compose_train
from tests.helpers.models import builder, randomize, save_state, tiny_sd21_cfg
from tests.helpers.repo import REPO
from vldm.checkpoints.export import export_safetensors
from vldm.checkpoints.load import build_model, load_run
from vldm.checkpoints.official import load_pretrained
from vldm.io.safe_load import CheckpointError
from vldm.checkpoints.svd_export import SVD_PREFIXES, T2V_PREFIXES, export_svd, load_exported
from vldm.jobs.export import main
from vldm.sampling.pipeline import LatentDiffusionSampler
from vldm.io.tensor_source import TensorSource


def make_run(root: Path, stage: str, scale: float = 0.9, seed: int = 0) -> Path:
    """A stage run directory as ``train.py`` leaves it (config.yaml + model.safetensors), random weights."""
    cfg = compose_train([f"stage={stage}", f"paths.root_dir={root}"])
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(seed)
    module = randomize(build_model(cfg.model), seed)
    module.scale_factor.fill_(scale)
    export_safetensors(module, run / "model.safetensors", metadata={"stage": stage, "global_step": "42"})
    return run


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-to-video run (the i2v stage): the SVD layout proper."""
    return make_run(tmp_path_factory.mktemp("runs"), "i2v")


@pytest.fixture(scope="module")
def t2v_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text-to-video run (the hq stage)."""
    return make_run(tmp_path_factory.mktemp("runs"), "hq", scale=0.8, seed=1)


@pytest.fixture(scope="module")
def exported(video_run: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export")
    return export_svd(video_run, out / "toy_svd.safetensors"), export_svd(video_run, out / "toy_fp32.safetensors",
                                                                            dtype=torch.float32)


def test_key_set_follows_the_svd_layout(exported) -> None:
    result = exported[0]
    with TensorSource(result.weights) as f:
        keys, dtypes, meta = f.keys(), f.dtypes(), f.metadata
    assert all(k.startswith(SVD_PREFIXES) for k in keys)
    assert "scale_factor" not in keys and not any(k.startswith("model_ema.") for k in keys)
    assert set(dtypes.values()) == {torch.float16}
    prefixes = {p: {k[len(p):] for k in keys if k.startswith(p)} for p in SVD_PREFIXES}
    assert all(prefixes.values())  # UNet, first stage, CLIP image tower, conditioning-frame encoder
    assert prefixes["conditioner.embedders.3.encoder."] == prefixes["first_stage_model."]  # shared, as in SVD files
    assert any(".time_stack." in k for k in prefixes["model.diffusion_model."])
    assert not any(k.startswith("transformer.") for k in prefixes["conditioner.embedders.0.open_clip.model."])
    assert meta["format"] == "svd" and meta["dtype"] == "fp16" and meta["global_step"] == "42"
    assert float(meta["scale_factor"]) == pytest.approx(0.9) and meta["model_channels"] == "32"
    assert meta["source_stage"] == "i2v" and int(meta["unet_parameters"]) > 0 and meta["vldm_version"]
    assert result.num_tensors == len(keys) and result.scale_factor == pytest.approx(0.9)


def test_sgm_yaml_mirrors_svd_image_decoder(exported) -> None:
    result = exported[0]
    cfg = OmegaConf.load(result.config)
    params = cfg.model.params
    assert cfg.model.target == "sgm.models.diffusion.DiffusionEngine" and params.scale_factor == pytest.approx(0.9)
    assert params.denoiser_config.params.scaling_config.target.endswith("VScalingWithEDMcNoise")
    net = params.network_config
    assert net.target == "sgm.modules.diffusionmodules.video_model.VideoUNet"
    assert (net.params.model_channels, net.params.in_channels, net.params.adm_in_channels) == (32, 8, 96)
    assert list(net.params.channel_mult) == [1, 2] and net.params.num_classes == "sequential"
    targets = [e.target.rsplit(".", 1)[-1] for e in params.conditioner_config.params.emb_models]
    assert targets == ["FrozenOpenCLIPImagePredictionEmbedder", "ConcatTimestepEmbedderND",
                       "ConcatTimestepEmbedderND", "VideoPredictionEmbedderWithEncoder", "ConcatTimestepEmbedderND"]
    assert params.first_stage_config.target == "sgm.models.autoencoder.AutoencoderKL"
    assert list(params.first_stage_config.params.ddconfig.ch_mult) == [1, 1, 2]
    clip = params.conditioner_config.params.emb_models[0].params.open_clip_embedding_config.params
    tower = result.weights.with_name("toy_svd.open_clip.json")
    assert clip.arch == "toy_svd.open_clip" and json.loads(tower.read_text())["embed_dim"] == 64


def test_reloads_strictly_with_identical_outputs(video_run: Path, exported) -> None:
    original, _ = load_run(video_run)
    fp16, fp32 = (load_exported(r.weights) for r in exported)
    assert float(fp32.scale_factor) == pytest.approx(float(original.scale_factor))
    state = fp32.state_dict()
    for name, value in original.state_dict().items():
        if name != "scale_factor":
            assert torch.equal(state[name], value), name
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    videos = [LatentDiffusionSampler.from_model(m).image_to_video(image, 2, cfg=m.sampler_cfg.__class__(num_steps=1), seed=1)
              for m in (original, fp32)]
    assert videos[0].shape == (1, 2, 3, 16, 16) and videos[0].std() > 0.01 and torch.equal(videos[0], videos[1])
    state = fp16.state_dict()
    for name, value in original.state_dict().items():
        if name != "scale_factor":
            assert torch.equal(state[name], value.half().float()), name


def test_a_text_to_video_run_exports_its_text_tower_and_reloads_strictly(t2v_run: Path, tmp_path: Path) -> None:
    result = export_svd(t2v_run, tmp_path / "t2v.safetensors", dtype=torch.float32)
    with TensorSource(result.weights) as f:
        keys, meta = f.keys(), f.metadata
    assert all(k.startswith(T2V_PREFIXES) for k in keys) and "scale_factor" not in keys
    assert all(any(k.startswith(p) for k in keys) for p in T2V_PREFIXES)  # UNet, first stage, text tower
    assert not any(k.startswith("conditioner.embedders.3.") or ".visual." in k for k in keys)
    assert meta["source_stage"] == "hq" and float(meta["scale_factor"]) == pytest.approx(0.8)
    params = OmegaConf.load(result.config).model.params
    net = params.network_config.params
    assert (net.in_channels, net.adm_in_channels, net.context_dim) == (4, 64, 64)
    text, *vector = params.conditioner_config.params.emb_models
    assert text.target == "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder" and text.input_key == "txt"
    assert (text.params.layer, text.params.max_length, text.params.arch) == ("penultimate", 32, "t2v.open_clip")
    assert [e.target.rsplit(".", 1)[-1] for e in vector] == ["ConcatTimestepEmbedderND"] * 2
    assert json.loads(result.weights.with_name("t2v.open_clip.json").read_text())["text_cfg"]["width"] == 64
    original, reloaded = load_run(t2v_run)[0], load_exported(result.weights)
    assert reloaded.task == "text_to_video"
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items() if k != "scale_factor")
    clips = [LatentDiffusionSampler.from_model(m).text_to_video(["a red circle"], 2, 16, 16,
                                                                cfg=m.sampler_cfg.__class__(num_steps=1), seed=1)
             for m in (original, reloaded)]
    assert clips[0].std() > 0.01 and torch.equal(clips[0], clips[1])


def test_cli_writes_both_files(video_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(video_run), str(tmp_path / "cli.safetensors"), "--dtype", "bf16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "cli.yaml").is_file()
    with TensorSource(tmp_path / "cli.safetensors") as f:
        assert set(f.dtypes().values()) == {torch.bfloat16} and f.metadata["dtype"] == "bf16"


def test_text_to_image_run_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, "image")
    with pytest.raises(ValueError, match=r"text-to-image \(stage 1\) model; the SVD layout is for image-to-video"):
        export_svd(run, tmp_path / "out.safetensors")


def test_weights_not_matching_their_config_are_refused(video_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.yaml").write_text((video_run / "config.yaml").read_text())
    save_state({"model.diffusion_model.out.2.bias": torch.zeros(4)}, run / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not match its run's config.*missing keys"):
        export_svd(run, tmp_path / "out.safetensors")


def test_exported_file_into_another_config_says_what_it_is(exported) -> None:
    with pytest.raises(CheckpointError, match=r"a vldm model exported in the SVD layout"):
        load_pretrained(builder(tiny_sd21_cfg()), exported[0].weights, layout="ldm")


@pytest.mark.skipif(not os.environ.get("VLDM_SGM_ROOT"), reason="needs the sgm reference tree (VLDM_SGM_ROOT)")
def test_sgm_builds_the_exported_yaml_with_the_file_keys(exported) -> None:
    """sgm's own DiffusionEngine, built on meta from the exported yaml, has exactly the file's keys.

    Run by hand: ``git -C <generative-models> archive HEAD sgm configs | tar -x -C /tmp/sgmref`` and
    ``VLDM_SGM_ROOT=/tmp/sgmref pytest tests/test_svd_export.py``."""
    import sys

    import open_clip

    sys.path.insert(0, str(REPO / "tools"))
    import make_svd_reference_keys as ref

    sys.meta_path.insert(0, ref._StubFinder(ref.STUBBED))
    sys.path.insert(0, os.environ["VLDM_SGM_ROOT"])
    from sgm.util import instantiate_from_config

    result = exported[0]
    open_clip.add_model_config(str(result.weights.with_name("toy_svd.open_clip.json")))
    cfg = OmegaConf.load(result.config)
    for emb in cfg.model.params.conditioner_config.params.emb_models:
        if "open_clip_embedding_config" in emb.get("params", {}):
            emb.params.open_clip_embedding_config.params.init_device = "meta"
    with torch.device("meta"):
        engine = instantiate_from_config(cfg.model)
    with TensorSource(result.weights) as f:
        assert {k: tuple(v.shape) for k, v in engine.state_dict().items()} == f.shapes()
