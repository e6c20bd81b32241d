"""Kill -9 a real `python -m data_curation` run, restart it: nothing lost, nothing written twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from data_curation.config import compose_curate
from data_curation.manifest import read_manifest
from data_curation.pipeline import curate
from data_curation.records import Clip
from data_curation.synthetic import write_raw_toy_videos
from tests.helpers.repo import REPO
from tests.helpers.shards import tar_samples


class SlowScorer:
    """Scores nothing, slowly: stretches the scoring phase so a kill lands in its middle."""

    name = "slow"
    available = True
    unavailable_reason = ""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def score(self, clip: Clip) -> dict[str, float]:
        time.sleep(self.seconds)
        return {}


SLOW = "+scorers.slow={_target_:tests.test_curation_resume.SlowScorer,seconds:0.15}"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "in"
    write_raw_toy_videos(root, count=10, seed=11, bad_files=True)
    return root


def _start(raw: Path, out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "data_curation", f"input={raw}", f"output={out}", "progress=false",
           "report=false", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_then_kill(proc: subprocess.Popen, ready: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the point to kill it at")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(raw: Path, out: Path, extra: list[str]) -> str:
    proc = _start(raw, out, extra)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return output


def _stamps(paths: list[Path]) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def _clean(raw: Path, out: Path, extra: list[str]) -> list[dict[str, Any]]:
    curate(compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false", *extra]),
           notify=lambda line: None)
    return read_manifest(out / "manifest.parquet")


def _same_outputs(out: Path, clean: Path, clean_rows: list[dict[str, Any]]) -> None:
    rows = read_manifest(out / "manifest.parquet")
    assert rows == clean_rows
    assert sorted(r["source"] for r in rows if r["row_type"] == "video") == sorted(
        {r["source"] for r in clean_rows if r["row_type"] == "video"})  # every input exactly once
    shards = {**tar_samples(out / "shards"), **tar_samples(out / "heldout")}
    want = {**tar_samples(clean / "shards"), **tar_samples(clean / "heldout")}
    keys = [k for samples in shards.values() for k in samples]
    assert sorted(keys) == sorted(r["clip_id"] for r in rows if r["row_type"] == "clip" and r["kept"])
    assert len(keys) == len(set(keys))
    assert {n: {k: s["json"] for k, s in v.items()} for n, v in shards.items()} == {
        n: {k: s["json"] for k, s in v.items()} for n, v in want.items()}
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_kill_during_scoring_then_resume(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    records = out / "work" / "videos"
    proc = _start(raw, out, [SLOW])
    _wait_then_kill(proc, lambda: len(list(records.glob("*.json"))) >= 3)
    done = sorted(records.glob("*.json"))
    assert 3 <= len(done) < 14 and not (out / "manifest.parquet").exists()
    before = _stamps(done)
    output = _finish(raw, out, [SLOW])
    assert "curated 14 inputs" in output
    assert {k: v for k, v in _stamps(sorted(records.glob("*.json"))).items() if k in before} == before  # not redone
    clean = tmp_path / "clean"  # the slow scorer adds no column: a clean run without it must match
    _same_outputs(out, clean, _clean(raw, clean, []))


@pytest.mark.slow
def test_kill_during_writing_then_resume(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["shards.clips_per_shard=1"]
    proc = _start(raw, out, extra)
    _wait_then_kill(proc, lambda: any((out / "shards").glob("*.tar")) if (out / "shards").is_dir() else False)
    written = sorted((out / "shards").glob("*.tar"))
    assert written and not (out / "manifest.parquet").exists()
    plan = len(json.loads((out / "work" / "shard_plan.json").read_text())["shards"])
    heldout_plan = len(json.loads((out / "work" / "heldout_plan.json").read_text())["shards"])
    assert len(written) < plan, "the write phase finished before the kill"
    before = _stamps(written)
    _finish(raw, out, extra)
    after = _stamps(sorted((out / "shards").glob("*.tar")))
    assert len(after) == plan and {k: after[k] for k in before} == before  # finished shards not rewritten
    clean = tmp_path / "clean"
    _same_outputs(out, clean, _clean(raw, clean, extra))
    # a rerun of a finished run redoes nothing
    summary = curate(compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false", *extra]),
                     notify=lambda line: None).summary
    assert summary["resumed_inputs"] == 14 and summary["shards_reused"] == plan + heldout_plan
    assert _stamps(sorted((out / "shards").glob("*.tar"))) == after


def test_changed_filters_rewrite_only_what_changed(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = [f"input={raw}", f"output={out}", "progress=false", "report=false", "shards.clips_per_shard=2"]
    first = curate(compose_curate(base), notify=lambda line: None)
    lines: list[str] = []
    second = curate(compose_curate(base + ["filters.text=null", "filters.static=null"]), notify=lines.append)
    assert second.summary["resumed_inputs"] == 14
    assert second.summary["kept"] > first.summary["kept"]
    assert any(line.startswith("shard plan changed") for line in lines)
    rows = read_manifest(out / "manifest.parquet")
    keys = [k for split in ("shards", "heldout") for samples in tar_samples(out / split).values() for k in samples]
    assert sorted(keys) == sorted(r["clip_id"] for r in rows if r["row_type"] == "clip" and r["kept"])
    assert len(keys) == len(set(keys)) == second.summary["kept"]
