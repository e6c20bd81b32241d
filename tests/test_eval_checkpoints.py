"""Which checkpoints an evaluation takes, and loading them (EMA weights, stage-1 inflation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vldm.evaluation.checkpoints import CheckpointRef, checkpoint_state, load_checkpoint, resolve_checkpoints

def fake_stage(root: Path, stage: str, kind: str = "diffusion", i2v: bool = True, step: int | None = 10,
               steps: tuple[int, ...] = (), final: bool = True, init_from: Path | None = None) -> Path:
    """A stage run dir with only what resolution reads: config.yaml, result.json, (empty) weight files."""
    d = root / stage
    (d / "checkpoints").mkdir(parents=True)
    init = None if init_from is None else str(init_from)
    OmegaConf.save(OmegaConf.create({"stage": {"name": stage, "kind": kind, "init_from": init}, "seed": 0,
                                     "model": {"diffusion": {"image_to_video": i2v}}}), d / "config.yaml")
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
    fake_stage(root, "autoencoder", kind="autoencoder", i2v=False, step=500)
    fake_stage(root, "hq", step=200, steps=(100, 200), init_from=root / "video" / "model.safetensors")
    fake_stage(root, "image", i2v=False, step=150, steps=(75, 150))
    fake_stage(root, "video", step=380, steps=(190, 380), init_from=root / "image" / "model.safetensors")
    return root


def test_run_root_gives_diffusion_stages_in_order_with_inflated_image(fake_run: Path) -> None:
    said: list[str] = []
    refs = resolve_checkpoints(str(fake_run), say=said.append)
    assert [r.name for r in refs] == ["image (inflated)", "video", "hq"]
    assert [r.step for r in refs] == [150, 380, 200]
    assert [r.cumulative_step for r in refs] == [150, 530, 730]
    assert refs[0].inflated and refs[0].video_config == fake_run / "video" / "config.yaml"
    assert not refs[1].inflated and refs[1].weights_path == fake_run / "video" / "model.safetensors"
    assert all(r.kind == "final" for r in refs)
    assert len(said) == 1 and "autoencoder" in said[0] and "skipping" in said[0]


def test_every_all_adds_step_checkpoints_once(fake_run: Path) -> None:
    refs = resolve_checkpoints(fake_run / "video", every="all")
    # step=380.ckpt is the final step: the export stands for it; last.ckpt is never listed
    assert [(r.name, r.step, r.kind) for r in refs] == [("video @190", 190, "step"), ("video", 380, "final")]
    assert refs[0].weights_path.name == "step=000190.ckpt"
    assert [r.cumulative_step for r in refs] == [340, 530]


def test_weights_files_and_lists(fake_run: Path) -> None:
    refs = resolve_checkpoints([str(fake_run / "hq" / "model.safetensors"),
                                str(fake_run / "image" / "checkpoints" / "step=000075.ckpt")],
                               video_config=fake_run / "hq")
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
    fake_stage(ae_only, "autoencoder", kind="autoencoder", i2v=False)
    with pytest.raises(ValueError, match="holds no diffusion stage"):
        resolve_checkpoints(str(ae_only))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a stage run dir"):
        resolve_checkpoints(str(empty))
    lonely = tmp_path / "lonely"
    fake_stage(lonely, "image", i2v=False)
    with pytest.raises(FileNotFoundError, match="video_config="):
        resolve_checkpoints(str(lonely))
    unfinished = tmp_path / "unfinished"
    fake_stage(unfinished, "video", step=None, final=False, steps=(2,))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        resolve_checkpoints(str(unfinished / "video"))
    assert [r.name for r in resolve_checkpoints(str(unfinished / "video"), every="all")] == ["video @2"]
    with pytest.raises(ValueError, match="every must be"):
        resolve_checkpoints(str(fake_run), every="some")


@pytest.fixture
def chain(smoke_chain: Path) -> Path:
    """The four smoke stages (4 steps each): the session's smoke chain."""
    return smoke_chain


@pytest.mark.slow
def test_step_checkpoint_gives_the_exported_ema_weights(chain: Path) -> None:
    """A Lightning checkpoint of the final step, read as the export does, equals model.safetensors exactly."""
    from vldm.io.safe_load import load_state_dict_file

    for stage in ("image", "video", "hq"):
        refs = resolve_checkpoints(chain / stage, every="all")
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
    """Stage 1 inflated = the video stage's module at step 0, tensor for tensor (train.py's build)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from vldm.training.run import build_module

    ref = resolve_checkpoints(chain / "image")[0]
    assert ref.name == "image (inflated)"
    module, cfg = load_checkpoint(ref)
    assert module.image_to_video and module.network.config.video and cfg.stage.name == "video"
    video_cfg = OmegaConf.load(chain / "video" / "config.yaml")
    pl.seed_everything(video_cfg.seed)
    instantiate(video_cfg.data, _convert_="object").setup("fit")  # as train_stage, before the module
    start = build_module(video_cfg, chain / "video")
    ours = module.state_dict()
    theirs = start.diffusion.state_dict()
    assert set(ours) == set(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    # and it is not the trained video stage
    video, _ = load_checkpoint(resolve_checkpoints(chain / "video")[0])
    assert any(not torch.equal(v, video.state_dict()[k]) for k, v in ours.items())
