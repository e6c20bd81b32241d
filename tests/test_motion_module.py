"""Motion modules: a video model's temporal layers exported alone and attached to another image model
(Video LDM, Blattmann et al., 2023: temporal layers transfer across fine-tuned image backbones)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.configs import compose_train
from tests.helpers.models import randomize, save_state
from vldm.checkpoints.load import build_model
from vldm.checkpoints.motion_module import MOTION_MODULE_FORMAT, UNET, export_motion_module, is_video_only_key
from vldm.checkpoints.stage_weights import load_stage_weights
from vldm.io.safe_load import CheckpointError, file_metadata
from vldm.jobs.export_motion_module import main


def toy_model(stage: str, *overrides: str, seed: int = 0):
    model = build_model(compose_train([f"stage={stage}", *overrides]).model)
    randomize(model, seed=seed)
    model.scale_factor.fill_(0.5 + seed / 10)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Image model B and video model A (a run directory), random weights each."""
    root = tmp_path_factory.mktemp("motion")
    run_a = root / "run_a"
    run_a.mkdir()
    video_a = toy_model("hq", seed=1)
    save_state(video_a.state_dict(), run_a / "model.safetensors", {"stage": "hq"})
    image_b = toy_model("image", seed=2)
    save_state(image_b.state_dict(), root / "image_b.safetensors", {"stage": "image"})
    return {"run_a": run_a, "image_b": root / "image_b.safetensors", "root": root}


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_export_writes_only_the_temporal_layers_with_their_key_list(files: dict[str, Path], capsys) -> None:
    out = files["root"] / "motion_module.safetensors"
    assert main(["--checkpoint", str(files["run_a"]), "--out", str(out)]) == 0
    module, video, image = _state(out), _state(files["run_a"] / "model.safetensors"), _state(files["image_b"])
    assert set(module) == set(video) - set(image)  # exactly what an image model of this architecture lacks
    assert all(k.startswith(UNET) and is_video_only_key(k[len(UNET):]) for k in module)
    assert any(".time_stack." in k for k in module) and any("label_emb" in k for k in module)
    assert all(torch.equal(module[k], video[k]) for k in module)
    meta = file_metadata(out)
    assert meta["format"] == MOTION_MODULE_FORMAT and meta["source_stage"] == "hq"
    assert meta["source"] == str(files["run_a"] / "model.safetensors")
    assert sorted(json.loads(meta["keys"])) == sorted(module)
    assert f"{len(module)} temporal tensors" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["module", "run"])
def test_inflating_with_temporal_from_takes_spatial_from_the_image_and_temporal_from_the_module(
        files: dict[str, Path], source: str) -> None:
    module_file = files["root"] / "mm.safetensors"
    export_motion_module(files["run_a"], module_file)
    temporal_from = module_file if source == "module" else files["run_a"]
    model = toy_model("video", seed=7)
    load_stage_weights(model, files["image_b"], "inflate", temporal_from=temporal_from)
    got = model.state_dict()
    image, video = _state(files["image_b"]), _state(files["run_a"] / "model.safetensors")
    unet = [k for k in got if k.startswith(UNET)]
    spatial = [k for k in unet if k in image]
    temporal = [k for k in unet if k not in image]
    assert len(spatial) > 100 and len(temporal) > 100
    assert all(torch.equal(got[k], image[k]) for k in spatial)
    assert all(torch.equal(got[k], video[k]) for k in temporal)
    for prefix in ("first_stage_model.", "conditioner.embedders.0."):  # autoencoder and text tower: B's
        keys = [k for k in image if k.startswith(prefix)]
        assert keys and all(torch.equal(got[k], image[k]) for k in keys)
    assert model.scale_factor.item() == pytest.approx(0.7)  # B's latent scale


def test_a_module_of_another_architecture_is_refused_naming_the_keys(files: dict[str, Path]) -> None:
    other = files["root"] / "other"
    other.mkdir(exist_ok=True)
    save_state(toy_model("hq", "model.diffusion.network.num_res_blocks=2").state_dict(), other / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit this video UNet.*unexpected keys: input_blocks\.\d\.\d\.time"):
        load_stage_weights(toy_model("video"), files["image_b"], "inflate", temporal_from=other)
    wider = files["root"] / "wider.safetensors"
    save_state(toy_model("hq", "model.diffusion.network.model_channels=64").state_dict(), wider)
    with pytest.raises(CheckpointError, match=r"shape mismatches: input_blocks\.1\.0\.time_stack"):
        load_stage_weights(toy_model("video"), files["image_b"], "inflate", temporal_from=wider)


def test_files_that_are_not_motion_modules_are_refused(files: dict[str, Path]) -> None:
    ckpt = files["root"] / "module.ckpt"
    torch.save(_state(files["run_a"] / "model.safetensors"), ckpt)
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_stage_weights(toy_model("video"), files["image_b"], "inflate", temporal_from=ckpt)
    fake = files["root"] / "fake.safetensors"
    fake.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        export_motion_module(fake, files["root"] / "never.safetensors")
    with pytest.raises(CheckpointError, match="holds no temporal layers"):
        load_stage_weights(toy_model("video"), files["image_b"], "inflate", temporal_from=files["image_b"])
    with pytest.raises(ValueError, match="needs init_mode inflate"):
        load_stage_weights(toy_model("hq"), files["run_a"], "full", temporal_from=files["run_a"])


def test_a_module_whose_tensors_differ_from_its_key_list_is_refused(files: dict[str, Path]) -> None:
    good = files["root"] / "good.safetensors"
    export_motion_module(files["run_a"], good)
    state, meta = _state(good), file_metadata(good)
    state.pop(sorted(state)[0])
    bad = save_state(state, files["root"] / "bad.safetensors", {k: v for k, v in meta.items() if k != "vldm_sha256"})
    with pytest.raises(CheckpointError, match="do not match the key list"):
        load_stage_weights(toy_model("video"), files["image_b"], "inflate", temporal_from=bad)


def test_temporal_from_is_a_video_stage_setting() -> None:
    cfg = compose_train(["stage=video", "stage.temporal_from=/some/motion_module.safetensors"])
    assert cfg.stage.temporal_from == "/some/motion_module.safetensors" and cfg.stage.init_mode == "inflate"
    with pytest.raises(Exception, match="temporal_from"):
        compose_train(["stage=image", "stage.temporal_from=/some/motion_module.safetensors"])


def test_train_config_temporal_from_fills_the_video_stage(files: dict[str, Path], tmp_path: Path) -> None:
    """``stage=video stage.init_from=B stage.temporal_from=A``: what train.py builds before fitting."""
    from vldm.training.run import build_module

    base = ["stage=video", "model.first_stage_weights=null"]
    cfg = compose_train([*base, f"stage.init_from={files['image_b']}", f"stage.temporal_from={files['run_a']}"])
    model = build_module(cfg, tmp_path).diffusion
    image, video = _state(files["image_b"]), _state(files["run_a"] / "model.safetensors")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in image.items() if k.startswith(UNET))
    assert all(torch.equal(got[k], v) for k, v in video.items() if k.startswith(UNET) and k not in image)
    orphan = compose_train([*base, "stage.init_from=null", f"stage.temporal_from={files['run_a']}"])
    with pytest.raises(ValueError, match="stage.init_from is not set"):
        build_module(orphan, tmp_path)


def test_the_transfer_check_measures_look_and_motion(files: dict[str, Path], toy_root: Path, tmp_path: Path) -> None:
    """The job end to end on tiny random models (figures not judged), then its report on known clips."""
    from omegaconf import OmegaConf

    from vldm.data.toy import generate_clip
    from vldm.jobs.motion_transfer_check import colour_statistics, main as check_main, transfer_report

    OmegaConf.save(compose_train(["stage=hq"]), files["run_a"] / "config.yaml")
    try:
        report = check_main(["--video-a", str(files["run_a"]), "--image-b", str(files["image_b"]),
                             "--stills-a", str(toy_root / "images"), "--stills-b", str(toy_root / "images"),
                             "--out", str(tmp_path / "check.json"), "--count", "2", "--num-steps", "2"])
    finally:
        (files["run_a"] / "config.yaml").unlink()
    assert report["count"] == 2 and json.loads((tmp_path / "check.json").read_text())["count"] == 2
    assert report["colour_distances"]["transferred_to_stills_a"] == report["colour_distances"]["transferred_to_stills_b"]
    # known clips: light-palette clips that move half as fast read as B's look and half A's motion
    dark = [generate_clip(s, "clean")[0] for s in range(4)]
    light = [generate_clip(s, "clean", palette="light")[0] for s in range(4)]
    still_light = [np.repeat(v[:1], 8, 0) for v in light]
    half = [np.concatenate([v[:1], v[:1], v[1:2], v[1:2], v[2:3], v[2:3], v[3:4], v[3:4]]) for v in light]
    moving = transfer_report(light, dark, ["a red circle moving right"] * 4, [v[0] for v in dark], [v[0] for v in light])
    assert moving["keeps_b_look"] and moving["motion_ratio"] > 0.7 and moving["passed"]
    slow = transfer_report(half, dark, ["a red circle moving right"] * 4, [v[0] for v in dark], [v[0] for v in light])
    assert 0.2 < slow["motion_ratio"] < 0.8
    frozen = transfer_report(still_light, dark, ["a red circle moving right"] * 4, [v[0] for v in dark], [v[0] for v in light])
    assert frozen["keeps_b_look"] and frozen["motion_ratio"] < 0.05 and not frozen["passed"]
    assert colour_statistics([np.full((2, 2, 3), 10, np.uint8)]) == [10.0, 10.0, 10.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same non-zero number"):
        transfer_report(light, dark[:2], ["x"] * 4, dark, light)
    with pytest.raises(FileNotFoundError, match="no train-.*tar image shards"):
        check_main(["--video-a", str(files["run_a"]), "--image-b", str(files["image_b"]), "--stills-a", str(tmp_path),
                    "--stills-b", str(tmp_path), "--out", str(tmp_path / "x.json"), "--count", "1", "--num-steps", "1"])
