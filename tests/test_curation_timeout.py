"""A decoder that hangs becomes a ``timeout`` error row within ``decode_timeout_s`` and the run goes
on (exit 0); the next run retries it. A FIFO given as an input is refused at once, never read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from data_curation.config import compose_curate
from data_curation.frame_stream import _Producer, call_with_timeout, stream_frames
from data_curation.manifest import read_manifest
from data_curation.pipeline import curate
from data_curation.records import CurationError
from data_curation.synthetic import write_raw_toy_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    write_raw_toy_videos(root, count=2, seed=11, bad_files=False)
    first = sorted(root.glob("*.mp4"))[0]
    shutil.copy(first, root / "hung.mp4")
    return root


@pytest.fixture
def hanging_decoder(monkeypatch: pytest.MonkeyPatch):
    """Decoding any file named hung.mp4 blocks until the test ends (a stalled file system stand-in)."""
    release = threading.Event()
    real_run = _Producer.run

    def run(self: _Producer, expected: int | None) -> None:
        if self.path.name == "hung.mp4":
            release.wait()
            return
        real_run(self, expected)

    monkeypatch.setattr(_Producer, "run", run)
    yield
    release.set()


def test_a_hung_stream_times_out(raw: Path, hanging_decoder: None) -> None:
    t = time.perf_counter()
    with pytest.raises(CurationError) as err:
        list(stream_frames(raw / "hung.mp4", 32, 8.0, timeout_s=0.5))
    assert err.value.code == "timeout" and "decode_timeout_s" in err.value.message
    assert time.perf_counter() - t < 30  # returned: the consumer is not stuck with the decoder
    with pytest.raises(CurationError, match="timeout"):
        call_with_timeout(threading.Event().wait, 0.2, "probing x")
    assert call_with_timeout(lambda: 7, 1.0, "x") == 7
    with pytest.raises(ValueError, match="timeout_s"):
        list(stream_frames(raw / "hung.mp4", 32, 8.0, timeout_s=0.0))


def test_the_run_records_the_hang_and_goes_on_then_retries_it(raw: Path, tmp_path: Path,
                                                               hanging_decoder: None) -> None:
    out = tmp_path / "out"
    cfg = compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false", "decode_timeout_s=1"])
    result = curate(cfg, notify=lambda line: None)
    assert result.summary["errors"] == {"timeout": 1}
    rows = read_manifest(out / "manifest.parquet")
    hung = [r for r in rows if r["source"] == "hung.mp4" and r["row_type"] == "video"]
    assert hung[0]["error_code"] == "timeout" and "1 s" in hung[0]["error_message"]
    assert any(r["row_type"] == "clip" and r["kept"] for r in rows)  # the other inputs were curated
    # the next run retries the timed-out input (the hang is still there: a timeout again, nothing else redone)
    again = curate(cfg, notify=lambda line: None)
    assert again.summary["errors"] == {"timeout": 1} and again.summary["resumed_inputs"] == 2


def test_the_command_exits_0_with_a_hung_input(raw: Path, tmp_path: Path) -> None:
    """``python -m data_curation`` itself, with the decoder of hung.mp4 replaced by one that blocks."""
    driver = textwrap.dedent(f"""
        import runpy, sys, threading
        from data_curation.frame_stream import _Producer
        real = _Producer.run
        def run(self, expected):
            if self.path.name == "hung.mp4":
                threading.Event().wait()
            else:
                real(self, expected)
        _Producer.run = run
        sys.argv = ["data_curation", "input={raw}", "output={tmp_path / 'out'}", "progress=false",
                    "report=false", "decode_timeout_s=1"]
        runpy.run_module("data_curation", run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "curated 3 inputs: 1 error (timeout 1)" in proc.stdout + proc.stderr
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert [r["error_code"] for r in rows if r["source"] == "hung.mp4"] == ["timeout"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_input_is_refused_not_read(raw: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # nobody ever writes to it: reading would block for ever
    listing = tmp_path / "list.txt"
    listing.write_text(f"{fifo}\n{sorted(raw.glob('video_*.mp4'))[0]}\n")
    result = curate(compose_curate([f"input={listing}", f"output={tmp_path / 'out'}", "progress=false",
                                    "report=false", "decode_timeout_s=5"]), notify=lambda line: None)
    assert result.summary["errors"] == {"not_a_video": 1}
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert [r["error_message"] for r in rows if r["source"] == str(fifo)][0].endswith("is not a regular file")
