"""The run directory of a curation run and its on-disk journal, which is what makes resume work.

Layout under the output directory::

    work/videos/<video_id>.json   one record per input (video row + clip rows), written atomically
    work/thumbs/<clip_id>.jpg     middle frame of each clip at the analysis size (for the report)
    work/shard_plan.json          which kept training clip goes to which shard
    work/heldout_plan.json        the same for the held-out (validation) clips
    shards/clips-000000.tar ...   kept training clips (written as .tar.tmp, then renamed)
    heldout/heldout-000000.tar .. kept held-out clips: the validation split
    manifest.parquet, summary.json, config.yaml, report.html

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed
with :func:`os.replace`, so a killed run leaves either the old file, the new one, or a ``*.tmp``
that the next run removes — never half a file under the final name. An input is done when its
record exists and the recorded size and mtime still match the file (:func:`record_is_current`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via ``<path>.tmp`` + fsync + ``os.replace``; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as sorted, indented JSON atomically (see :func:`atomic_write_bytes`)."""
    text = json.dumps(obj, sort_keys=True, indent=1, allow_nan=True)
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class RunDir:
    """Paths of one curation run rooted at ``root`` (the ``output`` of the config)."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def videos(self) -> Path:
        return self.work / "videos"

    @property
    def thumbs(self) -> Path:
        return self.work / "thumbs"

    @property
    def shard_plan(self) -> Path:
        return self.work / "shard_plan.json"

    @property
    def heldout_plan(self) -> Path:
        return self.work / "heldout_plan.json"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def heldout(self) -> Path:
        return self.root / "heldout"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def record_path(self, vid: str) -> Path:
        return self.videos / f"{vid}.json"

    def thumb_path(self, cid: str) -> Path:
        return self.thumbs / f"{cid}.jpg"

    @property
    def lock(self) -> Path:
        return self.work / "run.lock"

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``work/run.lock`` (an ``flock``, released by the OS when the process ends, so a killed run
        leaves none behind): a second run on the same output stops instead of deleting the first's files."""
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise RuntimeError(f"another curation run (pid {holder}) is writing {self.root}: wait for it to "
                                   "end (rerunning then resumes it), or give another output=DIR") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def prepare(self) -> int:
        """Create the directories and remove ``*.tmp`` leftovers of a killed run; returns how many."""
        for d in (self.videos, self.thumbs, self.shards, self.heldout):
            d.mkdir(parents=True, exist_ok=True)
        removed = 0
        for d in (self.root, self.work, self.videos, self.thumbs, self.shards, self.heldout):
            for tmp in d.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def load_record(self, vid: str) -> dict[str, Any] | None:
        """The stored record of input ``vid``, or None when absent or unreadable."""
        path = self.record_path(vid)
        try:
            record = read_json(path)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None

    def write_record(self, record: dict[str, Any], thumbs: dict[str, bytes] | None = None) -> Path:
        """Store the thumbnails, then the record (the record last: it marks the input done)."""
        for cid, jpeg in sorted((thumbs or {}).items()):
            atomic_write_bytes(self.thumb_path(cid), jpeg)
        return atomic_write_json(self.record_path(record["video_id"]), record)


def file_stamp(path: str | Path) -> dict[str, int]:
    """Size and mtime (ns) of a file: what a record must match to count as done."""
    st = os.stat(path)
    return {"size_bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def record_is_current(record: dict[str, Any] | None, stamp: dict[str, int], config_key: str) -> bool:
    """True when ``record`` was made from a file with this ``stamp`` under the same scoring config."""
    return (
        record is not None
        and record.get("stamp") == stamp
        and record.get("config_key") == config_key
    )
