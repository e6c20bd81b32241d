"""Every weights file vldm writes carries a content hash that every read checks; init_from takes run directories
and says what a wrong file is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers.configs import compose_train
from tests.helpers.models import randomize, save_state
from vldm.checkpoints.export import export_safetensors
from vldm.checkpoints.load import build_model, load_run
from vldm.checkpoints.stage_weights import load_stage_weights
from vldm.checkpoints.svd_export import export_svd, load_exported
from vldm.io.safe_load import CheckpointError, load_state_dict_file, save_safetensors
from vldm.io.tensor_source import TensorSource

CONTENT_HASH = "vldm_sha256"


def file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def make_run(root: Path, stage: str) -> Path:
    """A stage run directory as ``train.py`` leaves it (config.yaml + model.safetensors), random weights."""
    cfg = compose_train([f"stage={stage}", f"paths.root_dir={root}"])
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module = randomize(build_model(cfg.model), 0)
    module.scale_factor.fill_(0.9)
    export_safetensors(module, run / "model.safetensors", metadata={"stage": stage, "global_step": "4"})
    return run


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for stage in ("image", "video"):
        make_run(root, stage)
    return root / "runs" / "toy"


def test_a_flipped_bit_is_refused_by_every_reader(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 3), "n": torch.arange(3), "h": torch.randn(5).half()}
    path = save_safetensors(state, tmp_path / "w.safetensors", {"stage": "image"})
    assert len(file_metadata(path)[CONTENT_HASH]) == 64
    assert all(torch.equal(load_state_dict_file(path)[k], v) for k, v in state.items())
    flip_last_byte(path)
    with pytest.raises(CheckpointError, match=r"w\.safetensors is corrupt: its tensor data does not match"):
        load_state_dict_file(path)
    with pytest.raises(CheckpointError, match=r"w\.safetensors is corrupt"):
        TensorSource(path)


def test_files_without_the_hash_still_load(tmp_path: Path) -> None:
    path = save_state({"w": torch.ones(2)}, tmp_path / "official.safetensors")  # written by safetensors itself
    assert CONTENT_HASH not in file_metadata(path)
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))
    with TensorSource(path) as source:
        assert torch.equal(source.get("w"), torch.ones(2))


def test_run_weights_and_exports_are_checked(runs: Path, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(runs / "video", tmp_path / "video"))
    exported = export_svd(run, tmp_path / "toy.safetensors").weights
    assert CONTENT_HASH in file_metadata(exported)
    load_exported(exported)
    flip_last_byte(exported)
    with pytest.raises(CheckpointError, match="toy.safetensors is corrupt"):
        load_exported(exported)
    load_run(run)
    flip_last_byte(run / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_run(run)


def hq_module(root: Path, init_from: Path | str, mode: str = "full"):
    from vldm.training.run import build_module

    cfg = compose_train(["stage=hq", f"paths.root_dir={root}", f"stage.init_from={init_from}",
                         f"stage.init_mode={mode}"])
    return build_module(cfg, root / "hq")


def test_init_from_a_corrupt_file_is_refused(runs: Path, tmp_path: Path) -> None:
    import shutil

    weights = Path(shutil.copy(runs / "video" / "model.safetensors", tmp_path / "video.safetensors"))
    flip_last_byte(weights)
    with pytest.raises(CheckpointError, match="video.safetensors is corrupt"):
        hq_module(tmp_path, weights)


def test_init_from_takes_a_run_directory(runs: Path, tmp_path: Path) -> None:
    module = hq_module(tmp_path, runs / "video")
    expected = load_state_dict_file(runs / "video" / "model.safetensors")
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(module.diffusion.state_dict()[key], expected[key])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty_run is a directory without model.safetensors"):
        hq_module(tmp_path, tmp_path / "empty_run")


def test_a_wrong_stage_file_says_what_it_is_and_what_was_expected(runs: Path) -> None:
    video = build_model(compose_train(["stage=video"]).model)
    with pytest.raises(CheckpointError) as err:
        load_stage_weights(video, runs / "image" / "model.safetensors", "full")
    message = str(err.value)
    assert "the weights of a vldm 'image' stage (metadata stage=image, global_step=4)" in message
    assert "expected this very text-to-video model (a vldm 'video' or 'hq' stage)" in message
    assert "stage.init_mode=inflate" in message
    i2v = build_model(compose_train(["stage=i2v"]).model)
    with pytest.raises(CheckpointError) as err:
        load_stage_weights(i2v, runs / "video" / "model.safetensors", "full")
    message = str(err.value)
    assert "the weights of a vldm 'video' stage (metadata stage=video, global_step=4)" in message
    assert "expected this very image-to-video model (a vldm 'i2v' stage)" in message
    assert "stage.init_mode=i2v" in message


def test_in_memory_weights_carry_the_hash_too() -> None:
    from vldm.io.safe_load import load_weights_bytes, weights_bytes

    state = {"latents": torch.randn(2, 4, 4, 4), "empty": torch.zeros(0)}
    data = weights_bytes(state, {"kind": "latent"})
    assert all(torch.equal(load_weights_bytes(data)[k], v) for k, v in state.items())
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    with pytest.raises(CheckpointError, match="clip_07.safetensors is corrupt"):
        load_weights_bytes(bytes(flipped), what="clip_07.safetensors")
