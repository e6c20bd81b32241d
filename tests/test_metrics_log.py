"""``logs/metrics.csv`` across restarts: a resumed run keeps the rows before its step, a fresh start
in the same directory sets the old log aside, nothing is deleted."""

from __future__ import annotations

import csv
from pathlib import Path

from vldm.training.metrics_log import ContinuingCSVLogger


def _write(path: Path, steps: range) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["epoch", "step", "train/loss"])
        writer.writeheader()
        writer.writerows({"epoch": 0, "step": s, "train/loss": s / 10} for s in steps)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _log(logger: ContinuingCSVLogger, steps: range, **extra: float) -> None:
    for s in steps:
        logger.log_metrics({"train/loss": s / 10, **extra}, step=s)
    logger.save()


def test_a_resumed_log_keeps_the_rows_before_the_resume_step(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.csv"
    _write(path, range(6))  # a killed run logged steps 0-5; its last checkpoint was at step 4
    logger = ContinuingCSVLogger(str(tmp_path), resume_step=4, name="logs", version="")
    _log(logger, range(4, 7))
    assert [int(r["step"]) for r in _rows(path)] == list(range(7))
    _log(logger, range(7, 8), **{"val/loss": 0.5})  # a new column rewrites the header, rows kept
    rows = _rows(path)
    assert [int(r["step"]) for r in rows] == list(range(8)) and rows[-1]["val/loss"] == "0.5"


def test_a_fresh_start_sets_an_old_log_aside(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.csv"
    _write(path, range(3))
    for n in (1, 2):
        logger = ContinuingCSVLogger(str(tmp_path), resume_step=None, name="logs", version="")
        _log(logger, range(2))
        assert [int(r["step"]) for r in _rows(path)] == [0, 1]
        assert (tmp_path / "logs" / f"metrics-previous-{n}.csv").is_file()
    assert [int(r["step"]) for r in _rows(tmp_path / "logs" / "metrics-previous-1.csv")] == [0, 1, 2]
