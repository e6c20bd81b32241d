"""One curation run per output directory: a second one stops (it would delete the first's files in
progress), and the lock of a killed run is gone with its process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_curation.config import compose_curate
from data_curation.pipeline import curate
from data_curation.synthetic import write_raw_toy_videos
from data_curation.work_dir import RunDir

HOLD = ("import sys; from pathlib import Path; from data_curation.work_dir import RunDir\n"
        "with RunDir(Path(sys.argv[1])).exclusive():\n    print('held', flush=True); sys.stdin.read()")


def _cfg(raw: Path, out: Path):
    return compose_curate([f"input={raw}", f"output={out}", "progress=false", "report=false"])


def test_a_second_run_on_one_output_is_refused_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    raw, out = tmp_path / "in", tmp_path / "out"
    write_raw_toy_videos(raw, count=2, seed=3, bad_files=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        in_progress = RunDir(out).work / "videos" / "v.json.tmp"  # a file the running curation is writing
        in_progress.parent.mkdir(parents=True, exist_ok=True)
        in_progress.write_text("{}")
        with pytest.raises(RuntimeError, match=rf"another curation run \(pid {holder.pid}\) is writing"):
            curate(_cfg(raw, out), notify=lambda line: None)
        assert in_progress.is_file() and not RunDir(out).summary.exists()
    finally:
        holder.kill()
        holder.wait()
    result = curate(_cfg(raw, out), notify=lambda line: None)  # the killed run's lock went with it
    assert result.summary["inputs"] == 2 and RunDir(out).summary.is_file()
