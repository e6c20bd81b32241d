"""The Lightning pipeline: configs, a learning step, stage chaining, resume and failure paths."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from tests.helpers.configs import compose_train
from tests.helpers.smoke import STAGES, smoke
from vldm.io.safe_load import CheckpointError, load_state_dict_file
from vldm.training.run import TrainingDiverged, stage_module, train_stage


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("experiment", ["toy", "smoke"])
def test_every_stage_and_experiment_instantiates(stage: str, experiment: str, toy_root: Path) -> None:
    cfg = compose_train([f"stage={stage}", f"experiment={experiment}", f"paths.data_dir={toy_root}"])
    module = stage_module(cfg)
    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.setup("fit")
    assert sum(p.numel() for p in module.parameters()) > 0
    assert cfg.stage.name == stage and cfg.paths.output_dir.endswith(f"/{stage}")


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="stage.max_stepz"):
        compose_train(["stage.max_stepz=3"])
    with pytest.raises(ConfigCompositionException):
        compose_train(["stage=videoo"])


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(toy_root: Path) -> None:
    """Same batch, same noise and sigmas every step (seeded generator): the loss must fall."""
    cfg = compose_train(["stage=video", f"paths.data_dir={toy_root}"])
    module = stage_module(cfg).train()
    dm = instantiate(cfg.data, batch_size=2, _convert_="object")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = module.diffusion_loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_trainable_temporal_freezes_spatial_layers(toy_root: Path) -> None:
    cfg = compose_train(["stage=video", f"paths.data_dir={toy_root}"])
    module = stage_module(cfg, trainable="temporal")
    trainable = [n for n, p in module.network.named_parameters() if p.requires_grad]
    assert trainable and all("time_" in n or n.startswith(("label_emb.", "input_blocks.0.0.")) for n in trainable)
    assert "input_blocks.1.0.in_layers.2.weight" not in trainable
    assert not any(p.requires_grad for p in module.first_stage_model.parameters())
    assert not any(p.requires_grad for p in module.conditioner.parameters())


@pytest.fixture
def chained_run(smoke_chain: Path) -> Path:
    """The four stages (4 steps each), each from the previous stage's weights: the session's smoke chain."""
    return smoke_chain


@pytest.mark.slow
def test_stage_chain_writes_outputs_and_keys_line_up(chained_run: Path) -> None:
    image = load_state_dict_file(chained_run / "image" / "model.safetensors")
    video = load_state_dict_file(chained_run / "video" / "model.safetensors")
    hq = load_state_dict_file(chained_run / "hq" / "model.safetensors")
    ae = load_state_dict_file(chained_run / "autoencoder" / "model.safetensors")
    # the image stage works in the trained autoencoder's latent space; video inherits both
    for k, v in ae.items():
        assert torch.equal(image[k], v) and torch.equal(video[k], v)
    # every image UNet weight reappears in the video UNet under the same name
    image_unet = {k for k in image if k.startswith("model.diffusion_model.")}
    video_unet = {k for k in video if k.startswith("model.diffusion_model.")}
    assert image_unet < video_unet
    assert all("time_" in k or "label_emb" in k for k in video_unet - image_unet)
    assert set(hq) == set(video) and not any(k.startswith("model_ema.") for k in hq)
    assert image["scale_factor"] == video["scale_factor"] > 0
    for stage in STAGES:
        d = chained_run / stage
        assert (d / "checkpoints" / "last.ckpt").is_file() and (d / "config.yaml").is_file()
    assert list((chained_run / "video" / "samples").glob("*.mp4"))
    assert list((chained_run / "hq" / "samples").glob("*.mp4"))


@pytest.mark.slow
def test_resume_continues_at_the_saved_step(tmp_path: Path, toy_root: Path, chained_run: Path) -> None:
    shutil.copytree(chained_run / "autoencoder", tmp_path / "runs" / "smoke" / "autoencoder")
    first = train_stage(smoke(tmp_path, toy_root, "image"))
    assert first.global_step == 4
    ckpt = torch.load(first.last_checkpoint, map_location="cpu", weights_only=True)
    result = train_stage(smoke(tmp_path, toy_root, "image", "stage.max_steps=6", "stage.checkpoint_every=1"))
    assert result.global_step == 6
    steps = [int(p.stem.split("=")[1]) for p in (result.run_dir / "checkpoints").glob("step=*.ckpt")]
    assert 5 in steps and 6 in steps and 1 not in steps  # steps 1-4 were not trained again
    resumed = torch.load(result.run_dir / "checkpoints" / "step=000005.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 5
    assert int(resumed["state_dict"]["model_ema.num_updates"]) == 5  # the EMA continued too
    # the optimizer state was carried over: Adam's step count continues from 4
    state = next(iter(resumed["optimizer_states"][0]["state"].values()))
    assert int(state["step"]) == 5 and int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"]) == 4


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path, toy_root: Path,
                                                                         chained_run: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from vldm.training.module import DiffusionModule

    original = DiffusionModule.diffusion_loss

    def poisoned(self, batch, generator=None):
        loss = original(self, batch, generator)
        return loss * float("nan") if self.training and self.global_step >= 3 else loss

    monkeypatch.setattr(DiffusionModule, "diffusion_loss", poisoned)
    shutil.copytree(chained_run / "autoencoder", tmp_path / "runs" / "smoke" / "autoencoder")
    with pytest.raises(TrainingDiverged, match=r"at step 3.*last good checkpoint is .*last\.ckpt") as err:
        train_stage(smoke(tmp_path, toy_root, "image", "stage.max_steps=6"))
    kept = torch.load(tmp_path / "runs" / "smoke" / "image" / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2 and "non-finite" in str(err.value)


def test_missing_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m vldm.jobs.toy_data"):
        train_stage(smoke(tmp_path, tmp_path / "nowhere", "image"))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        train_stage(smoke(tmp_path, tmp_path / "empty", "image"))


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path: Path, toy_root: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"model.diffusion_model.not_a_layer.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(CheckpointError, match=r"missing keys.*unexpected keys: model.diffusion_model.not_a_layer"):
        train_stage(smoke(tmp_path, toy_root, "hq", f"stage.init_from={bad}"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train_stage(smoke(tmp_path, toy_root, "hq", f"stage.init_from={tmp_path / 'absent.safetensors'}"))


@pytest.mark.slow
def test_corrupt_clip_is_skipped_and_training_goes_on(tmp_path: Path, toy_root: Path, chained_run: Path) -> None:
    import webdataset as wds

    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    for shard in sorted((data / "videos").glob("train-*.tar")):  # one corrupt clip in every shard
        samples = list(wds.WebDataset(str(shard), shardshuffle=False))
        with wds.TarWriter(str(shard)) as sink:
            for i, s in enumerate(samples):
                mp4 = b"\x00not an mp4" if i == 1 else s["mp4"]
                sink.write({"__key__": s["__key__"], "mp4": mp4, "json": s["json"]})
    root = tmp_path / "out"
    (root / "runs" / "smoke").mkdir(parents=True)
    shutil.copytree(chained_run / "image", root / "runs" / "smoke" / "image")
    result = train_stage(smoke(root, data, "video", "data.shuffle_buffer=0", "stage.max_steps=6",
                                "trainer.log_every_n_steps=1"))
    assert result.global_step == 6
    import json

    assert json.loads((result.run_dir / "result.json").read_text())["skipped_samples"] >= 1
    rows = list(csv.DictReader(open(result.run_dir / "logs" / "metrics.csv")))
    assert rows and all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows if r.get("train/loss"))


def test_unknown_module_argument_is_refused(toy_root: Path) -> None:
    cfg = compose_train(["stage=image", f"paths.data_dir={toy_root}", "+model.module.learning_rat=1"])
    with pytest.raises(Exception, match="learning_rat"):
        stage_module(cfg)


def test_wandb_is_offline_unless_the_user_gives_a_key(tmp_path: Path, toy_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from vldm.training.run import build_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train(["stage=image", f"paths.data_dir={toy_root}"])
    csv_logger, wandb_logger = build_loggers(cfg, tmp_path)
    assert isinstance(csv_logger, CSVLogger) and isinstance(wandb_logger, WandbLogger)
    assert wandb_logger._offline is True
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert build_loggers(cfg, tmp_path)[1]._offline is False
    assert len(build_loggers(compose_train(["stage=image", "logger=csv"]), tmp_path)) == 1


@pytest.mark.slow
def test_bf16_mixed_precision_and_gradient_checkpointing_train(tmp_path: Path, chained_run: Path,
                                                              toy_root: Path) -> None:
    root = tmp_path / "out"
    (root / "runs" / "smoke").mkdir(parents=True)
    shutil.copytree(chained_run / "image", root / "runs" / "smoke" / "image")
    result = train_stage(smoke(root, toy_root, "video", "trainer.precision=bf16-mixed",
                               "model.diffusion.network.gradient_checkpointing=true", "stage.max_steps=2"))
    assert result.global_step == 2
    state = load_state_dict_file(result.weights)
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_a_checkpoint_with_unprefixed_model_keys_still_loads(toy_root: Path) -> None:
    """Checkpoints from when the model's parts were the module's own (``model.diffusion_model.*`` at the top)."""
    cfg = compose_train(["stage=video", f"paths.data_dir={toy_root}"])
    source, target = stage_module(cfg), stage_module(cfg)
    for p in source.parameters():
        p.data.add_(0.01)
    flat = {k.removeprefix("diffusion."): v for k, v in source.state_dict().items()}
    assert "model.diffusion_model.out.2.weight" in flat and "model_ema.shadow.out.2.weight" in flat
    checkpoint = {"state_dict": flat}
    target.on_load_checkpoint(checkpoint)
    target.load_state_dict(checkpoint["state_dict"], strict=True)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
