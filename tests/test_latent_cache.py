"""Latent caching: video shards -> latent shards, read back, same loss as video, skips, resume, weights check."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.configs import compose_train
from tests.helpers.repo import REPO
from vldm.jobs.latent_cache import build_stage_module, cache_latents, fingerprint, main
from vldm.data.latent_dataset import MANIFEST, LatentClipDataset
from vldm.data.shards import VideoClipDataset
from vldm.io.tar_shards import iter_tar_samples


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is as fast, and immune to OpenMP stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_overrides(toy: Path, *extra: str) -> list[str]:
    """The video stage of the toy models, randomly initialised (no image stage needed)."""
    return ["stage=video", f"paths.data_dir={toy}", "stage.init_from=null", *extra]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Path:
    """The toy train + val clips cached by the CLI with the video stage's module (seed 0)."""
    out = tmp_path_factory.mktemp("latents")
    main([*stage_overrides(toy_root), "--out", str(out), "--batch-size", "8"])
    return out


@pytest.fixture(scope="module")
def module(toy_root: Path):
    """The module the CLI cached with: same config, same seed, hence the same weights."""
    return build_stage_module(stage_overrides(toy_root))[1]


def video_clips(shards: list[Path]) -> dict[str, dict]:
    ds = VideoClipDataset([str(s) for s in shards], num_frames=6, size=32, repeat=False, shuffle_shards=False)
    return {s["__key__"]: s for s in ds}


def latent_clips(shards: list[Path]) -> LatentClipDataset:
    return LatentClipDataset([str(s) for s in shards], repeat=False, shuffle_shards=False)


def test_one_latent_shard_per_video_shard_with_every_clip(cached: Path, toy_root: Path, module) -> None:
    video_shards = sorted((toy_root / "videos").glob("*.tar"))
    assert sorted(p.name for p in cached.glob("*.tar")) == [p.name for p in video_shards]
    assert not list(cached.glob("*.tmp"))
    for video_shard in video_shards:
        keys = [s["__key__"] for s in iter_tar_samples(str(cached / video_shard.name))]
        assert keys == list(video_clips([video_shard]))  # every decodable clip, in order, once
    manifest = json.loads((cached / MANIFEST).read_text())
    assert manifest["fingerprint"] == fingerprint(module)
    assert (manifest["num_frames"], manifest["size"], manifest["store"]) == (6, 32, "posterior")
    assert manifest["cached_embedders"] == {"0": "txt"}  # the text-to-video stage: the caption's context


def test_latent_samples_read_back_with_shapes_dtypes_and_values(cached: Path, toy_root: Path, module) -> None:
    shard = "train-000000.tar"
    latent = {s["__key__"]: s for s in latent_clips([cached / shard])}
    video = video_clips([toy_root / "videos" / shard])
    assert latent.keys() == video.keys() and len(latent) == 16
    key = next(iter(latent))
    s, v = latent[key], video[key]
    assert s["latents"].shape == s["latents_logvar"].shape == (6, 4, 8, 8)
    assert s["latents"].dtype == s["latents_logvar"].dtype == s["cond_frame"].dtype == torch.float32
    assert torch.equal(s["cond_frame"], v["video"][0])  # the pixels training sees, bit for bit
    assert s["cached.0"].shape == (32, 64)  # the caption's text context (32 tokens)
    assert (s["fps_id"], s["motion_bucket_id"], s["txt"]) == (v["fps_id"], v["motion_bucket_id"], v["txt"])
    with torch.no_grad():
        posterior = module.first_stage_model.encode(v["video"])
        text = module.conditioner.embedders[0]([v["txt"]])
    torch.testing.assert_close(s["latents"], posterior.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s["latents_logvar"], posterior.logvar, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s["cached.0"], text[0], rtol=1e-5, atol=1e-5)


def test_cached_batch_gives_the_video_batch_loss(cached: Path, toy_root: Path, module) -> None:
    """Same generator: same cond_aug, conditioning-frame noise, dropout, posterior sample, sigma, noise."""
    from torch.utils.data import DataLoader

    shard = "train-000001.tar"
    video = next(iter(DataLoader(VideoClipDataset([str(toy_root / "videos" / shard)], num_frames=6, size=32,
                                                  repeat=False, shuffle_shards=False), batch_size=4)))
    latent = next(iter(DataLoader(latent_clips([cached / shard]), batch_size=4)))
    assert latent["__key__"] == video["__key__"]
    module.train()  # guidance dropout on: its draws must line up too
    module.diffusion.scale_factor.fill_(0.7)
    for seed in range(3):
        want = module.diffusion_loss(video, torch.Generator().manual_seed(seed))
        got = module.diffusion_loss(latent, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    mode_only = {k: v for k, v in latent.items() if k != "latents_logvar"}  # no posterior sampling: another loss
    other = module.diffusion_loss(mode_only, torch.Generator().manual_seed(0))
    assert abs(other.item() - module.diffusion_loss(video, torch.Generator().manual_seed(0)).item()) > 1e-4


def _rewrite(src: Path, dst: Path, corrupt_key: str) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name == f"{corrupt_key}.safetensors":
                data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + data[40:]
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(cached: Path, tmp_path: Path) -> None:
    keys = [s["__key__"] for s in iter_tar_samples(str(cached / "train-000000.tar"))]
    _rewrite(cached / "train-000000.tar", tmp_path / "a.tar", corrupt_key=keys[3])
    data = (cached / "train-000001.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])
    ds = latent_clips([tmp_path / "a.tar", tmp_path / "b.tar"])
    got = [s["__key__"] for s in ds]
    assert ds.num_skipped == 2  # the corrupt sample + the truncated shard
    assert keys[3] not in got and len(got) == len(set(got))
    assert 15 < len(got) < 15 + 16  # all of a.tar but the corrupt sample, the first part of b.tar


def test_interrupted_cache_job_resumes_without_duplicates(toy_root: Path, tmp_path: Path, module,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import vldm.jobs.latent_cache as lc

    shards = sorted(str(p) for p in (toy_root / "videos").glob("train-*.tar"))
    original, calls = lc.encode_clips, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first batch of the second shard (16 clips a shard, 8 a batch)
            raise RuntimeError("node lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(lc, "encode_clips", failing)
    with pytest.raises(RuntimeError, match="node lost"):
        cache_latents(module, shards, tmp_path, num_frames=6, size=32, batch_size=8)
    assert [p.name for p in tmp_path.glob("*.tar")] == ["train-000000.tar"] and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(lc, "encode_clips", original)
    report = cache_latents(module, shards, tmp_path, num_frames=6, size=32, batch_size=8)
    assert [s.done_before for s in report.shards] == [True, False, False]
    keys = [s["__key__"] for s in latent_clips(sorted(tmp_path.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 48


@pytest.mark.slow
def test_killed_cache_process_resumes_without_duplicates(toy_root: Path, tmp_path: Path) -> None:
    """A real SIGKILL mid-shard leaves a ``.tmp``; the rerun rewrites that shard only, once."""
    out = tmp_path / "latents"
    script = (
        "import sys, time\n"
        "import vldm.jobs.latent_cache as lc\n"
        "original = lc.encode_clips\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.4)\n"
        "    return original(*a, **k)\n"
        "lc.encode_clips = slow\n"
        "lc.main(sys.argv[1:])\n"
    )
    cmd = [sys.executable, "-c", script, *stage_overrides(toy_root), "--out", str(out), "--batch-size", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not ((out / "train-000000.tar").exists() and (out / "train-000001.tar.tmp").exists()):
        assert proc.poll() is None and time.time() < deadline, "the cache job ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train-000001.tar").exists()
    report = main([*stage_overrides(toy_root), "--out", str(out), "--batch-size", "4"])
    assert report.shards[0].done_before and not any(s.done_before for s in report.shards[1:])
    assert not list(out.glob("*.tmp"))
    keys = [s["__key__"] for s in latent_clips(sorted(out.glob("*.tar")))]
    assert len(keys) == len(set(keys)) == 48 + 6


def latent_train_cfg(cached: Path, toy: Path, root: Path, *extra: str):
    return compose_train([*stage_overrides(toy), "experiment=smoke", f"paths.root_dir={root}",
                          "trainer.enable_progress_bar=false", "data=toy_videos_latent",
                          f"data.train_shards={cached}/train-*.tar", f"data.val_shards={cached}/val-*.tar", *extra])


def test_latents_of_other_weights_are_refused(cached: Path, toy_root: Path, tmp_path: Path) -> None:
    from vldm.training.run import train_stage

    with pytest.raises(ValueError, match="latent cache was made with another autoencoder"):
        train_stage(latent_train_cfg(cached, toy_root, tmp_path, "seed=1"))  # other random weights than the cache's
    _, other = build_stage_module(stage_overrides(toy_root, "seed=1"))
    with pytest.raises(ValueError, match="other settings"):  # nor are two weights' latents mixed in one cache
        cache_latents(other, str(toy_root / "videos" / "val-*.tar"), cached, num_frames=6, size=32)


@pytest.mark.slow
def test_a_stage_trains_and_validates_on_the_latent_config(cached: Path, toy_root: Path, tmp_path: Path) -> None:
    from vldm.training.run import train_stage

    result = train_stage(latent_train_cfg(cached, toy_root, tmp_path))  # 4 steps, validation + samples at step 4
    assert result.global_step == 4 and list((result.run_dir / "samples").glob("*.mp4"))
    with (result.run_dir / "logs" / "metrics.csv").open(newline="") as file:
        [val] = [float(r["val/loss"]) for r in csv.DictReader(file) if r.get("val/loss")]
    assert 0 < val < 10  # the validation loss on cached latents, finite



def test_cache_takes_one_strided_window_and_records_it(tmp_path: Path, module) -> None:
    from tests.helpers.shards import counting_shard
    from vldm.jobs.latent_cache import encode_batch
    from vldm.data.latent_dataset import decode_latent_sample

    shard = counting_shard(tmp_path / "train-000000.tar", {"a": 12, "b": 9})
    out = tmp_path / "latents"
    report = cache_latents(module, [str(shard)], out, num_frames=4, size=[16, 24], frame_stride=3)
    assert report.written == 1 and report.skipped == 1  # 'b' cannot span 10 frames
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["frame_stride"] == 3 and manifest["size"] == [16, 24] and manifest["num_frames"] == 4
    (sample,) = iter_tar_samples(str(out / shard.name))
    tensors = decode_latent_sample(sample["safetensors"])
    assert json.loads(sample["json"])["fps_id"] == 7  # 24 fps source, every 3rd frame
    clip = next(iter(VideoClipDataset([str(shard)], num_frames=4, size=[16, 24], repeat=False, frame_stride=3)))
    expected = encode_batch(module, clip["video"][None], [""])
    torch.testing.assert_close(tensors["latents"], expected["latents"][0])
    with pytest.raises(ValueError, match="one window per clip"):
        cache_latents(module, [str(shard)], tmp_path / "other", num_frames=4, size=16, frame_stride=[1, 2])


def test_rank_and_world_default_to_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from vldm.jobs.latent_cache import parse_args

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    args, _ = parse_args([])
    assert (args.rank, args.world) == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    args, _ = parse_args([])
    assert (args.rank, args.world) == (2, 4)  # srun
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    args, overrides = parse_args(["--rank", "1", "stage=video"])
    assert (args.rank, args.world, overrides) == (1, 8, ["stage=video"])  # torchrun; --rank wins
