"""``<run dir>/logs/metrics.csv`` that survives a resume: Lightning's CSV logger with its history kept.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. Here a run that resumes
at global step ``s`` keeps the rows of steps before ``s`` (the rows a killed run logged after its last
checkpoint are logged again by the resumed run, so they are dropped), and a fresh start in a run
directory that already has a log moves that log to ``metrics-previous-<n>.csv``. Rows are flushed
every ``flush_logs_every_n_steps`` steps.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


def _previous_name(path: Path) -> Path:
    n = 1
    while (path.parent / f"metrics-previous-{n}.csv").exists():
        n += 1
    return path.parent / f"metrics-previous-{n}.csv"


def _step(row: dict) -> int | None:
    """The row's step; None for a row cut short (a process killed while writing it)."""
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        return None


def keep_rows_before(path: Path, step: int) -> list[str]:
    """Rewrite the CSV at ``path`` with only its rows of steps before ``step``; returns its columns."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = sorted(reader.fieldnames or [])  # the order Lightning's writer appends in
        rows = [row for row in reader if (s := _step(row)) is not None and s < step]
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return columns


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing the file of a resumed run instead of deleting it."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:
            os.replace(path, _previous_name(path))
        else:
            self.metrics_keys = keep_rows_before(path, self.resume_step)


class ContinuingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the history of the run it resumes (see the module doc)."""

    def __init__(self, save_dir: str, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(save_dir, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment
