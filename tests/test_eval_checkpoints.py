"""Which checkpoints an evaluation takes for its mode, and loading them (EMA weights, stage-1 inflation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vldm.evaluation.checkpoints import CheckpointRef, checkpoint_state, load_checkpoint, resolve_checkpoints


def task_model(task: str) -> dict:
    """The part of a stage's ``model`` config that says its task."""
    return {"diffusion": {"image_to_video": task == "image_to_video", "network": {"video": task != "text_to_image"}}}


def fake_stage(root: Path, stage: str, kind: str = "diffusion", task: str = "text_to_video", step: int | None = 10,
               steps: tuple[int, ...] = (), final: bool = True, init_from: Path | None = None) -> Path:
    """A stage run dir with only what resolution reads: config.yaml, result.json, (empty) weight files."""
    d = root / stage
    (d / "checkpoints").mkdir(parents=True)
    init = None if init_from is None else str(init_from)
    OmegaConf.save(OmegaConf.create({"stage": {"name": stage, "kind": kind, "init_from": init}, "seed": 0,
                                     "model": task_model(task)}), d / "config.yaml")
    if step is not None:
        (d / "result.json").write_text(json.dumps({"stage": stage, "global_step": step}))
    if final:
        (d / "model.safetensors").write_bytes(b"")
    for s in steps:
        (d / "checkpoints" / f"step={s:06d}.ckpt").write_bytes(b"")
    (d / "checkpoints" / "last.ckpt").write_bytes(b"")
    return d


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "demo"
    fake_stage(root, "autoencoder", kind="autoencoder", task="text_to_image", step=500)
    fake_stage(root, "hq", step=200, steps=(100, 200), init_from=root / "video" / "model.safetensors")
    fake_stage(root, "i2v", task="image_to_video", step=50, init_from=root / "hq" / "model.safetensors")
    fake_stage(root, "image", task="text_to_image", step=150, steps=(75, 150))
    fake_stage(root, "video", step=380, steps=(190, 380), init_from=root / "image" / "model.safetensors")
    return root


def test_run_root_in_t2v_mode_gives_the_text_to_video_stages_with_inflated_image(fake_run: Path) -> None:
    said: list[str] = []
    refs = resolve_checkpoints(str(fake_run), say=said.append, mode="t2v")
    assert [r.name for r in refs] == ["image (inflated)", "video", "hq"]
    assert [r.step for r in refs] == [150, 380, 200]
    assert [r.cumulative_step for r in refs] == [150, 530, 730]
    assert refs[0].inflated and refs[0].video_config == fake_run / "video" / "config.yaml"
    assert not refs[1].inflated and refs[1].weights_path == fake_run / "video" / "model.safetensors"
    assert all(r.kind == "final" for r in refs)
    assert said == ["[vldm] eval: skipping i2v (image-to-video stage: mode=i2v evaluates it)",
                    "[vldm] eval: skipping autoencoder (autoencoder stage: makes no videos)"]


def test_run_root_in_i2v_mode_skips_the_text_to_video_stages(fake_run: Path) -> None:
    said: list[str] = []
    refs = resolve_checkpoints(str(fake_run), say=said.append, mode="i2v")
    assert [r.name for r in refs] == ["image (inflated)", "i2v"]
    assert [r.cumulative_step for r in refs] == [150, 780]  # i2v: hq's 730, then its 50
    assert refs[0].video_config == fake_run / "i2v" / "config.yaml"
    assert said == ["[vldm] eval: skipping video (text-to-video stage: mode=t2v evaluates it)",
                    "[vldm] eval: skipping hq (text-to-video stage: mode=t2v evaluates it)",
                    "[vldm] eval: skipping autoencoder (autoencoder stage: makes no videos)"]


def test_a_checkpoint_of_the_other_task_is_refused_naming_the_mode(fake_run: Path) -> None:
    with pytest.raises(ValueError, match="text-to-video stage 'hq', but mode=i2v .* evaluate it with mode=t2v"):
        resolve_checkpoints(fake_run / "hq", mode="i2v")
    with pytest.raises(ValueError, match="image-to-video stage 'i2v', but mode=t2v .* evaluate it with mode=i2v"):
        resolve_checkpoints(fake_run / "i2v" / "model.safetensors", mode="t2v")
    with pytest.raises(ValueError, match="video_config .* is an image-to-video model; mode=t2v inflates"):
        resolve_checkpoints(fake_run / "image", video_config=fake_run / "i2v", mode="t2v")
    with pytest.raises(ValueError, match="mode must be one of t2v, i2v"):
        resolve_checkpoints(fake_run, mode="v2v")


def test_every_all_adds_step_checkpoints_once(fake_run: Path) -> None:
    refs = resolve_checkpoints(fake_run / "video", every="all", mode="t2v")
    # step=380.ckpt is the final step: the export stands for it; last.ckpt is never listed
    assert [(r.name, r.step, r.kind) for r in refs] == [("video @190", 190, "step"), ("video", 380, "final")]
    assert refs[0].weights_path.name == "step=000190.ckpt"
    assert [r.cumulative_step for r in refs] == [340, 530]


def test_weights_files_and_lists(fake_run: Path) -> None:
    refs = resolve_checkpoints([str(fake_run / "hq" / "model.safetensors"),
                                str(fake_run / "image" / "checkpoints" / "step=000075.ckpt")],
                               video_config=fake_run / "hq", mode="t2v")
    assert [(r.name, r.stage, r.step, r.kind) for r in refs] == [("hq", "hq", 200, "file"),
                                                                 ("image (inflated) @75", "image", 75, "step")]
    assert refs[1].video_config == fake_run / "hq" / "config.yaml"


def test_clear_errors(fake_run: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoints(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="autoencoder makes no videos"):
        resolve_checkpoints(str(fake_run / "autoencoder"))
    with pytest.raises(ValueError, match="autoencoder makes no videos"):
        resolve_checkpoints(str(fake_run / "autoencoder" / "model.safetensors"))
    ae_only = tmp_path / "ae_only"
    fake_stage(ae_only, "autoencoder", kind="autoencoder", task="text_to_image")
    with pytest.raises(ValueError, match="holds no diffusion stage"):
        resolve_checkpoints(str(ae_only))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a stage run dir"):
        resolve_checkpoints(str(empty))
    lonely = tmp_path / "lonely"
    fake_stage(lonely, "image", task="text_to_image")
    with pytest.raises(FileNotFoundError, match="no text-to-video stage config: set video_config="):
        resolve_checkpoints(str(lonely), mode="t2v")
    unfinished = tmp_path / "unfinished"
    fake_stage(unfinished, "video", step=None, final=False, steps=(2,))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        resolve_checkpoints(str(unfinished / "video"), mode="t2v")
    assert [r.name for r in resolve_checkpoints(str(unfinished / "video"), every="all", mode="t2v")] == ["video @2"]
    with pytest.raises(ValueError, match="every must be"):
        resolve_checkpoints(str(fake_run), every="some")


@pytest.fixture
def chain(smoke_chain: Path) -> Path:
    """The five smoke stages (4 steps each): the session's smoke chain."""
    return smoke_chain


@pytest.mark.slow
def test_step_checkpoint_gives_the_exported_ema_weights(chain: Path) -> None:
    """A Lightning checkpoint of the final step, read as the export does, equals model.safetensors exactly."""
    from vldm.io.safe_load import load_state_dict_file

    for stage, mode in (("image", "t2v"), ("video", "t2v"), ("hq", "t2v"), ("i2v", "i2v")):
        refs = resolve_checkpoints(chain / stage, every="all", mode=mode)
        final = next(r for r in refs if r.kind == "final")
        path = chain / stage / "checkpoints" / "step=000004.ckpt"
        step_ckpt = CheckpointRef("x", stage, 4, chain / stage, path, "step")
        exported, from_ckpt = checkpoint_state(final), checkpoint_state(step_ckpt)
        assert set(exported) == set(from_ckpt)
        assert all(torch.equal(exported[k], from_ckpt[k]) for k in exported)
        live = load_state_dict_file(step_ckpt.weights_path)
        assert any(not torch.equal(live["diffusion." + k], exported[k]) for k in exported if k.startswith("model.diffusion_model."))


@pytest.mark.slow
def test_inflated_image_stage_is_what_the_video_stage_started_from(chain: Path, toy_root: Path) -> None:
    """mode=t2v: stage 1 inflated = the t2v video stage's module at step 0, tensor for tensor (train.py's
    build), with the image stage's own text tower."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from vldm.checkpoints.stage_weights import sub_state
    from vldm.io.safe_load import load_state_dict_file
    from vldm.training.run import build_module

    ref = resolve_checkpoints(chain / "image", mode="t2v")[0]
    assert ref.name == "image (inflated)" and ref.video_config == chain / "video" / "config.yaml"
    module, cfg = load_checkpoint(ref)
    assert module.task == "text_to_video" and cfg.stage.name == "video"
    tower = sub_state(load_state_dict_file(chain / "image" / "model.safetensors"), "conditioner.")
    assert tower and all(torch.equal(module.conditioner.state_dict()[k], v) for k, v in tower.items())
    video_cfg = OmegaConf.load(chain / "video" / "config.yaml")
    pl.seed_everything(video_cfg.seed)
    instantiate(video_cfg.data, _convert_="object").setup("fit")  # as train_stage, before the module
    start = build_module(video_cfg, chain / "video")
    ours = module.state_dict()
    theirs = start.diffusion.state_dict()
    assert set(ours) == set(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    # and it is not the trained video stage
    video, _ = load_checkpoint(resolve_checkpoints(chain / "video", mode="t2v")[0])
    assert any(not torch.equal(v, video.state_dict()[k]) for k, v in ours.items())


@pytest.mark.slow
def test_inflated_image_stage_in_i2v_mode_is_an_image_to_video_model(chain: Path) -> None:
    """mode=i2v: the image UNet inflated into the i2v stage's model, with that stage's frozen conditioner."""
    from vldm.checkpoints.stage_weights import UNET, sub_state
    from vldm.io.safe_load import load_state_dict_file

    ref = resolve_checkpoints(chain / "image", mode="i2v")[0]
    assert ref.video_config == chain / "i2v" / "config.yaml"
    module, cfg = load_checkpoint(ref)
    assert module.task == "image_to_video" and cfg.stage.name == "i2v"
    image = sub_state(load_state_dict_file(chain / "image" / "model.safetensors"), UNET)
    net = module.network.state_dict()
    assert torch.equal(net["out.2.weight"], image["out.2.weight"])
    i2v = load_state_dict_file(chain / "i2v" / "model.safetensors")
    assert all(torch.equal(v, i2v["conditioner." + k]) for k, v in module.conditioner.state_dict().items())
