"""`python -m vldm.evaluation`: checkpoints and folders in, metrics.json / CSV / plots out."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from tests.helpers.configs import compose_eval
from tests.helpers.evaluation import base_overrides, write_folder
from tests.helpers.repo import REPO
from vldm.evaluation import feature_nets
from vldm.evaluation.reference import load_reference_clips
from vldm.evaluation.run import evaluate

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                             "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class TinyI3D(torch.nn.Module):
    """The I3D TorchScript call convention (uint8 (b, 3, t, h, w), rescale / resize / return_features), 400-d."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(12, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        v = x.float() / 127.5 - 1.0 if rescale else x.float()
        stats = torch.cat([v.mean(dim=(2, 3, 4)), v.std(dim=(2, 3, 4)), v.diff(dim=2).abs().mean(dim=(2, 3, 4)),
                           v[:, :, :, ::2].mean(dim=(2, 3, 4))], dim=1)
        return torch.tanh(self.proj(stats))


class TinyInception(torch.nn.Module):
    """The NVlabs Inception TorchScript call convention (uint8 (b, 3, h, w), return_features); 64-d
    instead of 2048 (a 2048-d Fréchet distance takes seconds on a shared CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 64)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        v = x.float() / 255.0
        return torch.tanh(self.proj(torch.cat([v.mean(dim=(2, 3)), v.std(dim=(2, 3))], dim=1)))


def script(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(module.__class__()).save(str(path))
    return path


# ------------------------------------------------------------------------------ folder mode
@pytest.fixture
def folders(toy_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The first 4 reference clips as mp4s, and noised copies."""
    refs = load_reference_clips(f"{toy_root}/videos/val-*.tar", 4, 6, 32)
    rng = np.random.default_rng(0)
    noisy = np.clip(refs.videos + rng.normal(0, 40, refs.videos.shape), 0, 255).astype(np.uint8)
    return write_folder(tmp_path / "good", refs.videos), write_folder(tmp_path / "noisy", noisy)


def test_folder_mode_with_fvd_fid_standins(toy_root: Path, tmp_path: Path, folders: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folder mode end to end with FVD / FID (tiny scripted I3D / Inception stand-ins) and the weight-free
    metrics: the reference clips themselves score near-perfectly, noised copies worse; reference stats
    are cached by the first run and reused by the second."""
    good, noisy = folders
    i3d, inception = script(TinyI3D(), tmp_path / "i3d.pt"), script(TinyInception(), tmp_path / "incep.pt")
    monkeypatch.setattr(feature_nets, "InceptionFeatures", functools.partial(feature_nets.InceptionFeatures, dim=64))
    cache = tmp_path / "cache"

    def run(folder: Path, out: str) -> dict:
        return evaluate(compose_eval(base_overrides(toy_root, tmp_path / out, cache) + [
            f"videos={folder}", f"metrics.fvd.weights={i3d}", "metrics.fvd.num_frames=4", "metrics.fvd.resolution=32",
            f"metrics.fid.weights={inception}", "metrics.fid.resolution=32"]))["results"][0]

    first = run(good, "out_good")
    said = capsys.readouterr().out
    cached = sorted(cache.glob("*.npz"))
    assert len(cached) == 3 and said.count("reference stats: computed and cached") == 3  # fvd, fid, frpd
    assert "clip skipped: metrics.clip.weights not set" in said
    mtimes = [p.stat().st_mtime_ns for p in cached]
    second = run(noisy, "out_noisy")
    said = capsys.readouterr().out
    assert said.count("reference stats: cached") == 3 and [p.stat().st_mtime_ns for p in cached] == mtimes

    g, n = first["metrics"], second["metrics"]
    assert set(g) == {"fvd", "fid", "frpd", "psnr", "ssim", "motion", "motion_ratio", "motion_w1", "flicker",
                      "warping_error"}
    assert set(first["skipped"]) == {"clip_score", "clip_temporal"}
    assert all(math.isfinite(m["value"]) for m in [*g.values(), *n.values()])
    assert g["psnr"]["value"] > 35 and g["ssim"]["value"] > 0.95 and n["psnr"]["value"] < 25
    for name in ("fvd", "fid", "frpd", "motion_w1", "flicker", "warping_error"):
        assert g[name]["value"] < n[name]["value"], name
    assert g["frpd"]["value"] < 0.05 * n["frpd"]["value"]
    assert abs(g["motion_ratio"]["value"] - 1.0) < 0.1
    proto = g["fvd"]["protocol"]
    assert (proto["num_videos"], proto["num_frames"], proto["resolution"], proto["fps"]) == (4, 4, 32, 8.0)
    assert proto["feature_net"] == "i3d" and proto["extra"]["generated_frames"] == 6
    assert g["fid"]["protocol"]["feature_net"] == "incep" and g["frpd"]["protocol"]["feature_net"] == "rp256-s0"
    assert "FVD from 4 videos is not comparable" in g["fvd"]["warning"] and "2048" in g["fvd"]["warning"]
    assert g["psnr"]["higher_is_better"] is True and g["fvd"]["higher_is_better"] is False
    assert len(first["per_video"]["psnr"]) == 4

    out = tmp_path / "out_good"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["checkpoints"][0]["metrics"]["fvd"]["protocol"]["seeds"].startswith("unknown")
    assert any("FVD from 4 videos" in w for w in saved["warnings"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["name"] == "good"
    assert float(rows[0]["fvd"]) == pytest.approx(g["fvd"]["value"], rel=1e-5)
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"fvd.png", "motion_w1.png", "overview.png"}


@pytest.mark.slow
def test_folder_mode_clip_metrics_and_wandb(toy_root: Path, tmp_path: Path, folders: tuple[Path, Path]) -> None:
    """CLIP score / temporal consistency through the run (a tiny random CLIP), logged to wandb offline."""
    good, _ = folders
    cfg = compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") + [
        f"videos={good}", "metrics.frpd.enabled=false", "metrics.warping=false", "logger.wandb.enabled=true",
        "logger.wandb.offline=true"])
    cfg.metrics.clip.model_config = TINY_CLIP
    result = evaluate(cfg)["results"][0]
    clip_score, temporal = result["metrics"]["clip_score"], result["metrics"]["clip_temporal"]
    assert 0.0 <= clip_score["value"] <= 100.0 and 0.0 < temporal["value"] <= 1.0 + 1e-6
    assert clip_score["protocol"]["feature_net"] == "open_clip-custom" and clip_score["higher_is_better"] is True
    assert "frpd" not in result["metrics"] and "warping_error" not in result["metrics"]
    (run_dir,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    assert any(run_dir.rglob("*.wandb"))


def test_folder_mode_unpaired_count_skips_paired_metrics(toy_root: Path, tmp_path: Path) -> None:
    refs = load_reference_clips(f"{toy_root}/videos/val-*.tar", 4, 6, 32)
    folder = write_folder(tmp_path / "three", refs.videos[:3])
    result = evaluate(compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") +
                                   [f"videos={folder}", "metrics.warping=false"]))["results"][0]
    assert "psnr" not in result["metrics"] and "3 videos" in result["skipped"]["psnr"]
    assert {"frpd", "motion_w1", "flicker"} <= set(result["metrics"]) and "warping_error" not in result["metrics"]
    assert result["metrics"]["frpd"]["protocol"]["num_videos"] == 3


def test_folder_mode_at_a_non_square_size(toy_root: Path, tmp_path: Path) -> None:
    """SVD-shaped (wider than tall) protocols: reference clips cropped to [h, w], paired metrics computed."""
    refs = load_reference_clips(f"{toy_root}/videos/val-*.tar", 4, 6, (16, 32))
    assert refs.videos.shape[1:] == (6, 16, 32, 3) and refs.hw == (16, 32) and refs.resolution == [16, 32]
    folder = write_folder(tmp_path / "wide", refs.videos)
    result = evaluate(compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") +
                                   [f"videos={folder}", "data.size=[16,32]"]))["results"][0]
    assert result["metrics"]["psnr"]["value"] > 40 and result["metrics"]["psnr"]["protocol"]["resolution"] == [16, 32]
    with pytest.raises(ValueError, match=r"000\.mp4 is 32x16 .*protocol resolution is 16x32"):
        evaluate(compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") +
                              [f"videos={folder}", "data.size=[32,16]"]))


# --------------------------------------------------------------------------- clear messages
def test_absent_weights_name_the_file_and_its_source(toy_root: Path, tmp_path: Path) -> None:
    base = base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") + [f"videos={tmp_path}"]
    with pytest.raises(FileNotFoundError, match=r"missing/i3d_torchscript\.pt.*i3d_torchscript\.pt.*dropbox"):
        evaluate(compose_eval(base + [f"metrics.fvd.weights={tmp_path}/missing/i3d_torchscript.pt"]))
    with pytest.raises(FileNotFoundError, match=r"inception-2015-12-05\.pt.*nvlabs-fi-cdn"):
        evaluate(compose_eval(base + [f"metrics.fid.weights={tmp_path}/nope.pt"]))
    with pytest.raises(FileNotFoundError, match=r"open_clip_pytorch_model\.bin"):
        evaluate(compose_eval(base + [f"metrics.clip.weights={tmp_path}/clip.bin"]))


def test_folder_of_the_wrong_resolution_is_refused(toy_root: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "big", np.zeros((2, 6, 48, 48, 3), np.uint8))
    cfg = compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") +
                       [f"videos={folder}", "data.size=32"])
    with pytest.raises(ValueError, match=r"resolution mismatch: .*000\.mp4 is 48x48 .*protocol resolution is 32x32"):
        evaluate(cfg)


def test_too_few_frames_for_fvd_is_refused_before_generating(toy_root: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "short", np.zeros((2, 6, 32, 32, 3), np.uint8))
    i3d = script(TinyI3D(), tmp_path / "i3d_torchscript.pt")
    cfg = compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache") +
                       [f"videos={folder}", f"metrics.fvd.weights={i3d}", "metrics.fvd.resolution=32"])
    with pytest.raises(ValueError, match="FVD needs 16 frames per video .* clips have 6"):
        evaluate(cfg)


def test_config_refuses_unknown_keys_and_needs_one_source(toy_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="metricz"):
        compose_eval(["metricz.fvd.weights=x"])
    with pytest.raises(ConfigCompositionException, match="weight"):
        compose_eval(["metrics.fvd.weight=x"])
    with pytest.raises(ValueError, match="either checkpoints=RUN .* or videos=DIR"):
        evaluate(compose_eval(base_overrides(toy_root, tmp_path / "out", tmp_path / "cache")))


@pytest.mark.parametrize("task, mode, message", [
    ("image_to_video", "t2v", r"i2v is an image-to-video model; mode=t2v .*\(evaluate it with mode=i2v\)"),
    ("text_to_video", "i2v", r"i2v is a text-to-video model; mode=i2v .*\(evaluate it with mode=t2v\)"),
    ("text_to_image", "t2v", "text-to-image model; .* evaluated inflated into the mode's video model"),
    ("text_to_video", "v2v", "mode must be one of t2v, i2v"),
])
def test_generation_refuses_a_model_of_another_task_naming_the_mode(task: str, mode: str, message: str) -> None:
    from vldm.evaluation.generate import GenerationSettings, generate_videos

    model = type("Model", (), {"task": task})()
    with pytest.raises(ValueError, match=message):
        generate_videos(model, None, GenerationSettings(num_frames=6, size=32, mode=mode), what="i2v")


def test_caption_following_needs_toy_captions_and_t2v() -> None:
    from vldm.evaluation.mode_metrics import mode_skips

    toy = ["a red circle moves right slowly on a dark blue background"]
    assert set(mode_skips("t2v", toy)) == {"psnr", "ssim"}
    assert "no conditioning image" in mode_skips("t2v", toy)["psnr"]
    other = mode_skips("t2v", [*toy, "a cat on a sofa"])
    assert set(other) == {"psnr", "ssim", "caption_colour_accuracy", "caption_direction_accuracy"}
    assert "reference caption 1 is not a toy caption" in other["caption_colour_accuracy"]
    assert mode_skips("i2v", ["a cat on a sofa"]) == {}


def test_reference_clips_are_the_first_n_in_file_order(toy_root: Path) -> None:
    a = load_reference_clips(f"{toy_root}/videos/val-*.tar", 3, 6, 32)
    b = load_reference_clips(f"{toy_root}/videos/val-*.tar", 5, 6, 32)
    assert a.videos.shape == (3, 6, 32, 32, 3) and a.videos.dtype == np.uint8
    assert b.keys[:3] == a.keys and np.array_equal(b.videos[:3], a.videos)
    assert a.fingerprint != b.fingerprint and len(a.captions) == 3 and a.fps == [8.0] * 3


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture
def chain(smoke_chain: Path) -> Path:
    """The five smoke stages (4 steps each): the session's smoke chain."""
    return smoke_chain


@pytest.mark.slow
def test_evaluating_the_smoke_chain(chain: Path, toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """mode=i2v: image (inflated into the i2v model) and i2v of a 4-step chain, the t2v stages skipped: table,
    plots, protocol fields; the reference statistics are cached by the first run and reused by
    `python -m vldm.evaluation` after it."""
    cache, out = tmp_path / "cache", tmp_path / "eval"
    cfg = compose_eval(base_overrides(toy_root, out, cache) + [f"checkpoints={chain}", "mode=i2v",
                                                                "sampler.num_steps=2"])
    results = evaluate(cfg)["results"]
    said = capsys.readouterr().out
    assert "skipping autoencoder" in said and "reference stats: computed and cached" in said
    assert "skipping video (text-to-video stage: mode=t2v evaluates it)" in said and "skipping hq" in said
    assert [r["name"] for r in results] == ["image (inflated)", "i2v"]
    assert [r["cumulative_step"] for r in results] == [4, 16]
    for r in results:
        assert set(r["metrics"]) == {"frpd", "psnr", "ssim", "motion", "motion_ratio", "motion_w1", "flicker",
                                     "warping_error"}
        assert set(r["skipped"]) == {"fvd", "fid", "clip_score", "clip_temporal"}
        for m in r["metrics"].values():
            assert math.isfinite(m["value"])
            p = m["protocol"]
            assert (p["num_videos"], p["resolution"], p["fps"]) == (4, 32, 8.0)
            assert p["seeds"].startswith("0..3") and p["extra"]["sampler"]["num_steps"] == 2
            assert p["num_frames"] == (16 if m is r["metrics"]["frpd"] else 6)
        assert "mostly noise" in r["metrics"]["frpd"]["warning"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["name"] for row in rows] == ["image (inflated)", "i2v"]
    assert [row["stage"] for row in rows] == ["image", "i2v"]
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert plots == {f"{m}.png" for m in results[0]["metrics"]} | {"overview.png"}
    assert all((out / "plots" / p).stat().st_size > 5000 for p in plots)
    (cached,) = cache.glob("*.npz")
    mtime = cached.stat().st_mtime_ns

    proc = subprocess.run([sys.executable, "-m", "vldm.evaluation", f"checkpoints={chain}/i2v", "mode=i2v",
                           *base_overrides(toy_root, tmp_path / "again", cache), "sampler.num_steps=2",
                           "save_videos=true"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reference stats: cached {cached}" in proc.stdout
    assert cached.stat().st_mtime_ns == mtime
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["checkpoints"]
    assert [r["name"] for r in again] == ["i2v"]
    for name, m in results[1]["metrics"].items():  # same seeds, same videos, same numbers (up to float
        # rounding between processes, which can move a uint8 pixel by one)
        assert again[0]["metrics"][name]["value"] == pytest.approx(m["value"], rel=1e-3, abs=1e-6), name

    # the saved mp4s, scored in folder mode, pair with the reference clips by name (mp4 is lossy: close, not equal)
    saved = sorted((tmp_path / "again" / "i2v" / "videos").glob("*.mp4"))
    assert [p.name for p in saved] == [f"{i:05d}_seed{i}.mp4" for i in range(4)]
    folder = evaluate(compose_eval(base_overrides(toy_root, tmp_path / "folder", cache) +
                                   [f"videos={saved[0].parent}"]))["results"][0]["metrics"]
    assert folder["psnr"]["value"] == pytest.approx(again[0]["metrics"]["psnr"]["value"], abs=0.5)
    assert folder["motion_ratio"]["value"] == pytest.approx(again[0]["metrics"]["motion_ratio"]["value"], rel=0.2)


@pytest.mark.slow
def test_evaluating_the_smoke_chain_text_to_video(chain: Path, toy_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """mode=t2v: image (inflated into the t2v model), video and hq from the toy captions, the i2v stage skipped;
    caption following on the toy captions, frame-0 fidelity skipped with its reason; table and plots."""
    out = tmp_path / "eval"
    cfg = compose_eval(base_overrides(toy_root, out, tmp_path / "cache") + [f"checkpoints={chain}", "mode=t2v",
                                                                             "sampler.num_steps=2"])
    results = evaluate(cfg)["results"]
    said = capsys.readouterr().out
    assert "skipping i2v (image-to-video stage: mode=i2v evaluates it)" in said
    assert [r["name"] for r in results] == ["image (inflated)", "video", "hq"]
    assert [r["cumulative_step"] for r in results] == [4, 8, 12]
    for r in results:
        assert r["mode"] == "t2v"
        assert set(r["metrics"]) == {"frpd", "motion", "motion_ratio", "motion_w1", "flicker", "warping_error",
                                     "caption_colour_accuracy", "caption_direction_accuracy"}
        assert set(r["skipped"]) == {"fvd", "fid", "clip_score", "clip_temporal", "psnr", "ssim"}
        assert "no conditioning image" in r["skipped"]["psnr"]
        for name in ("caption_colour_accuracy", "caption_direction_accuracy"):
            m = r["metrics"][name]
            assert m["higher_is_better"] is True and m["value"] in (0.0, 0.25, 0.5, 0.75, 1.0)
            assert len(r["per_video"][name]) == 4
        extra = r["metrics"]["frpd"]["protocol"]["extra"]
        assert extra["mode"] == "t2v" and "cond_aug" not in extra
        assert extra["sampler"]["min_guidance"] == extra["sampler"]["max_guidance"]  # t2v: constant guidance
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["stage"] for row in rows] == ["image", "video", "hq"]
    assert all(0.0 <= float(row["caption_colour_accuracy"]) <= 1.0 for row in rows)
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"caption_colour_accuracy.png", "caption_direction_accuracy.png", "overview.png"} <= plots
    assert "psnr.png" not in plots
    written = json.loads((out / "metrics.json").read_text())
    assert written["config"]["mode"] == "t2v" and [r["name"] for r in written["checkpoints"]] == ["image (inflated)",
                                                                                                   "video", "hq"]


@pytest.mark.slow
def test_a_t2v_video_is_the_samplers_video_for_its_caption_and_seed(chain: Path, toy_root: Path) -> None:
    from vldm.evaluation.checkpoints import load_checkpoint, resolve_checkpoints
    from vldm.evaluation.generate import GenerationSettings, generate_videos, sampler_config
    from vldm.sampling.pipeline import LatentDiffusionSampler
    from vldm.video.pixels import tensor_to_frames

    module, _ = load_checkpoint(resolve_checkpoints(chain / "hq", mode="t2v")[0])
    clips = load_reference_clips(f"{toy_root}/videos/val-*.tar", 2, 6, 32)
    settings = GenerationSettings(num_frames=6, size=32, base_seed=5, mode="t2v", sampler={"num_steps": 1},
                                  progress=False)
    _, videos = generate_videos(module, clips, settings)
    direct = LatentDiffusionSampler.from_model(module).text_to_video(
        clips.captions[1:2], 6, 32, 32, fps_id=int(clips.fps[1]) - 1, motion_bucket_id=clips.motion_bucket_ids[1],
        cfg=sampler_config(module, {"num_steps": 1}), seed=[6])
    assert np.abs(tensor_to_frames(direct[0]).astype(np.int16) - videos[1]).max() <= 1
    assert not np.array_equal(videos[0], videos[1])


@pytest.mark.slow
def test_generated_videos_do_not_depend_on_the_number_of_ranks(chain: Path, toy_root: Path) -> None:
    from vldm.evaluation.checkpoints import load_checkpoint, resolve_checkpoints
    from vldm.evaluation.generate import GenerationSettings, generate_videos

    module, _ = load_checkpoint(resolve_checkpoints(chain / "i2v", mode="i2v")[0])
    clips = load_reference_clips(f"{toy_root}/videos/val-*.tar", 3, 6, 32)
    settings = GenerationSettings(num_frames=6, size=32, base_seed=5, sampler={"num_steps": 1}, progress=False)
    idx, alone = generate_videos(module, clips, settings)
    parts = [generate_videos(module, clips, settings, rank=r, world=2) for r in range(2)]
    assert idx == [0, 1, 2] and [p[0] for p in parts] == [[0, 1], [2]]
    # the same videos whatever the ranks and batches, up to float rounding in batched kernels (uint8 +-1)
    split = np.concatenate([p[1] for p in parts]).astype(np.int16)
    one_by_one = generate_videos(module, clips, replace(settings, batch_size=1))[1].astype(np.int16)
    for other in (split, one_by_one):
        assert np.abs(other - alone).max() <= 1 and np.abs(other - alone).mean() < 0.01
    assert alone.shape == (3, 6, 32, 32, 3) and alone.dtype == np.uint8
    assert not np.array_equal(alone[0], alone[1])
    other_seed = generate_videos(module, clips, GenerationSettings(num_frames=6, size=32, base_seed=6,
                                                                   sampler={"num_steps": 1}, progress=False))[1]
    assert not np.array_equal(other_seed, alone)
