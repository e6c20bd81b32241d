"""Training a LoRA stage: only the adapter moves, checkpoints hold only it and the base's identity, resume, export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers.models import randomize, tiny_svd_cfg
from tests.helpers.smoke import smoke
from vldm.adapters.lora import LoraSpec, adapter_parameters, base_state_dict
from vldm.adapters.lora_file import read_lora
from vldm.training.adapter_stage import attach_adapter, lora_stage_overrides


def test_training_a_lora_on_a_tiny_svd_model_moves_only_the_adapter() -> None:
    from vldm.checkpoints.load import build_model

    cfg = tiny_svd_cfg()
    module = instantiate(cfg.model.module, model=build_model(cfg.model), ema_decay=None, _convert_="object")
    randomize(module.network)  # a trained base: a fresh UNet's zero output layer passes no gradient back
    attach_adapter(module, LoraSpec(rank=2, targets=("temporal_attention",)), {"base": "tiny"}, ema_decay=0.9)
    before = {k: v.clone() for k, v in base_state_dict(module.diffusion).items()}
    adapter_before = {k: v.clone() for k, v in adapter_parameters(module.network).items()}
    optimizer = module.configure_optimizers()["optimizer"]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in adapter_parameters(module.network).values()}
    gen = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(1, 2, 3, 32, 32, generator=gen) * 2 - 1, "fps_id": torch.tensor([6]),
             "motion_bucket_id": torch.tensor([127])}
    module.train()
    for _ in range(3):
        loss = module.diffusion_loss(batch, torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.model_ema.update(module.network)
    after = base_state_dict(module.diffusion)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    moved = [k for k, p in adapter_parameters(module.network).items() if not torch.equal(p, adapter_before[k])]
    assert any(".lora_B." in k for k in moved) and any(".lora_A." in k for k in moved)
    assert any(not torch.equal(v, adapter_before[k]) for k, v in module.model_ema.values().items())


def test_a_lora_stage_on_the_smoke_i2v_run_trains_resumes_and_exports(smoke_chain: Path, toy_root: Path,
                                                                      tmp_path: Path) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.training.run import train_stage

    base_run = smoke_chain / "i2v"
    overrides = [*lora_stage_overrides(base_run, rank=2, alpha=4.0), "stage.checkpoint_every=1",
                 "stage.val_every=1000"]
    first = train_stage(smoke(tmp_path, toy_root, "i2v", *overrides, "stage.max_steps=2"))
    assert first.run_dir == tmp_path / "runs" / "smoke" / "lora" and first.global_step == 2
    assert first.weights.name == "lora.safetensors" and not (first.run_dir / "model.safetensors").exists()
    ckpt = torch.load(first.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(".lora_" in k or k.startswith("model_ema.") for k in keys)
    assert ckpt["adapter"]["base"] == str((base_run / "model.safetensors").resolve())
    assert ckpt["adapter"]["base_sha256"] and ckpt["adapter"]["spec"]["rank"] == 2
    base_model, _ = load_run(base_run / "model.safetensors")
    lora = read_lora(first.weights, base_model.network)
    assert set(lora.ranks.values()) == {2} and set(lora.alpha.values()) == {4.0}
    assert lora.metadata["vldm_base"] == ckpt["adapter"]["base"] and lora.metadata["global_step"] == "2"

    resumed = train_stage(smoke(tmp_path, toy_root, "i2v", *overrides, "stage.max_steps=3"))
    assert (resumed.global_step, resumed.trained_steps) == (3, 1)
    again = read_lora(resumed.weights, base_model.network)
    assert any(not torch.equal(again.up[k], lora.up[k]) for k in lora.up)

    other_base = [*overrides, f"stage.init_from={smoke_chain / 'i2v' / 'model.safetensors'}", "stage.max_steps=4",
                  "stage.adapter={kind:lora,rank:3,alpha:4.0,targets:temporal_attention}", "resume=force"]
    with pytest.raises(Exception, match="adapter was trained with spec"):
        train_stage(smoke(tmp_path, toy_root, "i2v", *other_base))


def test_adapter_stage_settings_that_say_something_else_are_refused(toy_root: Path, tmp_path: Path) -> None:
    from vldm.training.adapter_stage import check_adapter_stage

    with pytest.raises(ValueError, match="stage.init_mode=full"):
        check_adapter_stage(smoke(tmp_path, toy_root, "i2v", "stage.adapter=lora"))
    with pytest.raises(ValueError, match="has no meaning with stage.adapter"):
        check_adapter_stage(smoke(tmp_path, toy_root, "video", "stage.adapter=lora", "stage.init_mode=full",
                                  "stage.trainable=temporal"))
    with pytest.raises(ValueError, match="needs a base model"):
        check_adapter_stage(smoke(tmp_path, toy_root, "image", "stage.adapter=lora"))
    with pytest.raises(ValueError, match="its own name, e.g. stage.name=lora"):
        check_adapter_stage(smoke(tmp_path, toy_root, "i2v", "stage.adapter=lora", "stage.init_mode=full",
                                  f"stage.init_from={tmp_path / 'runs' / 'smoke' / 'i2v'}"))
    with pytest.raises(ValueError, match="not supported"):
        check_adapter_stage(smoke(tmp_path, toy_root, "hq", "stage.adapter=lora", "trainer=fsdp"))


def test_the_svd_xt_camera_lora_preset_builds_at_full_size_on_meta() -> None:
    """``experiment=svd_xt_camera_lora``: SVD-XT i2v, a rank-16 temporal_attention LoRA that alone trains."""
    from omegaconf.errors import InterpolationToMissingValueError

    from tests.helpers.configs import compose_train
    from vldm.training.adapter_stage import adapter_spec, check_adapter_stage
    from vldm.training.run import stage_module

    with pytest.raises(InterpolationToMissingValueError, match="motion"):
        compose_train(["experiment=svd_xt_camera_lora"]).stage.name
    cfg = compose_train(["experiment=svd_xt_camera_lora", "paths.pretrained=/models/svd_xt.safetensors",
                         "paths.clips=/data/camera/pan_left", "motion=pan_left", "paths.root_dir=/r"])
    check_adapter_stage(cfg)
    assert cfg.paths.output_dir == "/r/runs/svd_xt_camera_lora/pan_left" and cfg.data.num_frames == 25
    assert adapter_spec(cfg) == LoraSpec(rank=16, alpha=16.0, targets=("temporal_attention",))
    with torch.device("meta"):
        module = stage_module(cfg, trainable="all", ema_decay=None)
        attach_adapter(module, adapter_spec(cfg), {"base": cfg.stage.init_from}, cfg.model.module.ema_decay)
    trainable = {n: p.numel() for n, p in module.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable) and sum(trainable.values()) == 3_319_808
    assert sum(v.numel() for v in module.model_ema.values().values()) == 3_319_808
