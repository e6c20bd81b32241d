"""A curation run: raw videos in, scored and filtered webdataset shards out (SVD data curation).

Stable Video Diffusion (Blattmann et al. 2023, Sec. 3 / App. E) curates its training set by cutting
videos at scene changes and filtering the clips on motion, burned-in text, aesthetics and
caption similarity. :func:`curate` runs that as five phases over a run directory
(:mod:`data_curation.work_dir`):

1. list the inputs (every file under ``input``, or the paths of an input list; caption sidecars
   ``<stem>.txt``/``.json`` attach to the file with that stem, a list's caption column wins),
2. score each input in the engine (:func:`data_curation.scoring.score_input`) and journal one
   record per input — inputs whose record matches the file are skipped, which is resume,
3. filter all clips on the driver (:mod:`data_curation.filters`),
4. hold out a validation split of the kept clips (:mod:`data_curation.heldout`), give every clip
   its ``motion_bucket_id`` (:func:`data_curation.scorers.motion.motion_bucket_id`), and write the
   kept clips into shards in the engine (:mod:`data_curation.shard_writer`): ``shards/`` for
   training, ``heldout/`` for validation,
5. write the manifest, ``summary.json`` and the HTML report.

Bad inputs become manifest rows with an error code; the run itself only fails on a bad config.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from data_curation.config import check_sections
from data_curation.engines import WorkerDied, make_engine
from data_curation.filters import apply_filters, filter_specs
from data_curation.heldout import check_fraction, heldout_videos
from data_curation.manifest import write_manifest
from data_curation.records import clip_id
from data_curation.scorers.motion import check_bucket_scale, motion_bucket_id
from data_curation.scoring import InputFile, ScoreTask, new_record, score_input, scoring_settings, set_error, worker_state
from data_curation.shard_writer import (HELDOUT_PATTERN, SHARD_PATTERN, OutputConfig, ShardClip, ShardTask,
                                        content_digest, plan_shards, reconcile_plan, write_shard)
from data_curation.work_dir import RunDir, atomic_write_bytes, atomic_write_json, file_stamp, record_is_current

logger = logging.getLogger(__name__)

SIDECAR_EXTS = (".txt", ".json")
CONFIG_KEYS = frozenset({"input", "output", "extensions", "analysis_short_side", "progress", "report", "prefilter",
                         "cuts", "clips", "scorers", "filters", "shards", "engine", "heldout_fraction",
                         "motion_bucket_scale", "decode_timeout_s"})
DEFAULT_HELDOUT_FRACTION = 0.05
DEFAULT_MOTION_BUCKET_SCALE = 0.1
# clip-row fields that describe the decision, not the clip: left out of the shard json
_DECISION_FIELDS = ("row_type", "kept", "dropped_by", "dropped_by_all", "error_code", "error_message", "shard",
                    "split")


@dataclass
class CurationResult:
    """What a run produced (``summary`` is the content of ``summary.json``)."""

    output_dir: Path
    summary: dict[str, Any]
    line: str
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)


def _read_caption(path: Path) -> str | None:
    try:
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8").strip()
            return text or None
        data = json.loads(path.read_text(encoding="utf-8"))
        caption = data.get("caption") if isinstance(data, dict) else None
        return str(caption).strip() or None if caption is not None else None
    except (OSError, ValueError):
        return None


LIST_SUFFIXES = (".txt", ".csv", ".parquet")


def _sidecar_caption(path: Path) -> str | None:
    for ext in SIDECAR_EXTS:
        side = path.with_suffix(ext)
        if side != path and side.is_file():
            caption = _read_caption(side)
            if caption is not None:
                return caption
    return None


def _stamp(path: Path) -> dict[str, int]:
    try:
        return file_stamp(path)
    except OSError:  # dangling symlink, or removed since the listing: probing reports it
        return {"size_bytes": -1, "mtime_ns": -1}


def _list_rows(path: Path) -> list[tuple[str, str | None]]:
    """``(path, caption or None)`` of an input list: ``.txt`` one path a line (``#`` comments), ``.csv`` /
    ``.parquet`` with a ``path`` column and optionally ``caption``."""
    if path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [(line, None) for line in lines if line and not line.startswith("#")]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            table = list(csv.DictReader(file))
            columns = list(table[0]) if table else []
    else:
        import pyarrow.parquet as pq

        data = pq.read_table(path)
        columns, table = data.column_names, data.to_pylist()
    if table and "path" not in columns:
        raise ValueError(f"input list {path} has no 'path' column (columns: {', '.join(map(str, columns))})")
    rows = []
    for row in table:
        caption = row.get("caption")
        caption = None if caption is None or str(caption).strip() == "" else str(caption).strip()
        rows.append((str(row["path"]).strip(), caption))
    return rows


def list_input_file(listing: Path, extensions: Iterable[str] | None = None) -> tuple[list[InputFile], list[str]]:
    """Inputs named by an input list (see :func:`_list_rows`); relative paths are taken from the list's
    folder, and each path as written is the input's ``source`` (its video id). A caption column wins over
    sidecar captions. Listed paths that do not exist become ``missing`` rows, as in a folder."""
    exts = None if extensions is None else {"." + str(e).lower().lstrip(".") for e in extensions}
    inputs, ignored, seen = [], [], {}
    for n, (name, caption) in enumerate(_list_rows(listing), start=1):
        if not name:
            raise ValueError(f"input list {listing}, entry {n}: empty path")
        if name in seen:
            raise ValueError(f"input list {listing} names {name!r} twice (entries {seen[name]} and {n})")
        seen[name] = n
        path = Path(name) if Path(name).is_absolute() else listing.parent / name
        if exts is not None and path.suffix.lower() not in exts:
            ignored.append(name)
            continue
        caption = caption if caption is not None else _sidecar_caption(path)
        inputs.append(InputFile(Path(name).as_posix(), str(path.absolute()), caption, _stamp(path)))
    return sorted(inputs, key=lambda i: i.source), ignored


def list_inputs(root: str | Path, extensions: Iterable[str] | None = None) -> tuple[list[InputFile], list[str]]:
    """Inputs under ``root`` (sorted relative paths) and the files not taken as inputs; ``root`` may also be
    an input list (``.txt`` / ``.csv`` / ``.parquet``, :func:`list_input_file`).

    Hidden files and directories are ignored. ``<stem>.txt`` / ``<stem>.json`` beside another file
    with the same stem are caption sidecars (the text, or the json's ``"caption"``; ``.txt`` wins),
    not inputs. ``extensions`` None: every other file is an input (non-videos become
    ``not_a_video`` rows); a list (``[mp4, mkv]``): only files with those extensions are, the rest
    are returned as ignored.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() in LIST_SUFFIXES:
        return list_input_file(root, extensions)
    if not root.is_dir():
        kind = "input list" if root.suffix.lower() in LIST_SUFFIXES else "input directory"
        raise FileNotFoundError(f"{kind} '{root}' does not exist (input= takes a folder of videos or a list: "
                                f"{', '.join(LIST_SUFFIXES)})")
    exts = None if extensions is None else {"." + str(e).lower().lstrip(".") for e in extensions}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    files = [f for f in files if f.is_file() or f.is_symlink()]  # a dangling link is a "missing" input
    stems = Counter((f.parent, f.stem) for f in files if f.suffix.lower() not in SIDECAR_EXTS)
    inputs, ignored = [], []
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in SIDECAR_EXTS and stems[(path.parent, path.stem)]:
            continue
        if exts is not None and path.suffix.lower() not in exts:
            ignored.append(rel)
            continue
        inputs.append(InputFile(rel, str(path.absolute()), _sidecar_caption(path), _stamp(path)))
    return inputs, ignored


def _plain_config(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return json.loads(json.dumps(cfg))


def _progress(items: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="task", disable=not enabled or total == 0, leave=False)


def _video_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {"row_type": "video", "video_id": record["video_id"], "source": record["source"],
           "caption": record.get("caption"), "kept": False}
    row.update(record["video"])
    return row


def _clip_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for clip in record["clips"]:
        row = {"row_type": "clip", "video_id": record["video_id"], "source": record["source"]}
        row.update(clip)
        row["clip_id"] = clip_id(record["video_id"], int(clip["clip_index"]))
        rows.append(row)
    return rows


def _score_phase(run: RunDir, inputs: list[InputFile], cfg: dict[str, Any], engine: Any,
                 notify: Callable[[str], None]) -> tuple[list[dict[str, Any]], int]:
    settings, key = scoring_settings(cfg)
    state = worker_state(settings, key)  # the driver builds the scorers once to announce the missing ones
    for name, reason in sorted(state.unavailable.items()):
        notify(reason if "skipped" in reason else f"{name} scorer skipped: {reason}")
    for note in state.notes:
        notify(note)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for inp in inputs:
        record = run.load_record(inp.video_id)
        timed_out = record is not None and record["video"].get("error_code") == "timeout"  # retried each run
        if record_is_current(record, inp.stamp, key) and record.get("caption") == inp.caption and not timed_out:
            records[inp.video_id] = record
        else:
            todo.append(ScoreTask(inp, settings, key))
    results = engine.map_unordered(score_input, todo)
    for task, result in _progress(results, len(todo), "score", cfg.get("progress", True)):
        if isinstance(result, WorkerDied):
            result = {"record": set_error(new_record(task.input, key), "internal_error", result.message), "thumbs": {}}
        run.write_record(result["record"], result["thumbs"])
        records[task.input.video_id] = result["record"]
    return [records[inp.video_id] for inp in inputs], len(inputs) - len(todo)


def _filter_phase(clip_rows: list[dict[str, Any]], filters: Mapping[str, Any] | None,
                  notify: Callable[[str], None]) -> list[dict[str, Any]]:
    specs = filter_specs(filters)
    outcome = apply_filters(clip_rows, specs)
    for name, reason in outcome.skipped.items():
        notify(f"filter {name} skipped: {reason}")
    for row, kept, first, every in zip(clip_rows, outcome.kept, outcome.dropped_by, outcome.dropped_by_all):
        row.update(kept=kept, dropped_by=first, dropped_by_all=every)
    summary = []
    for spec in specs:
        entry: dict[str, Any] = {"name": spec.name, "column": spec.column, "min": spec.min, "max": spec.max,
                                 "drop_lowest": spec.drop_lowest, "drop_highest": spec.drop_highest,
                                 "skipped": outcome.skipped.get(spec.name)}
        entry.update(outcome.thresholds.get(spec.name, {"threshold_min": None, "threshold_max": None}))
        entry.update(outcome.counts.get(spec.name, {"removed": 0, "removed_first": 0, "removed_alone": 0}))
        summary.append(entry)
    return summary


def _split_tasks(run: RunDir, split: str, rows: list[dict[str, Any]], paths: dict[str, str],
                 output: OutputConfig, notify: Callable[[str], None]) -> list[ShardTask]:
    """The shard tasks of one split (``train``: ``shards/``, ``heldout``: ``heldout/``), plan reconciled."""
    shard_dir, plan_path, pattern = ((run.shards, run.shard_plan, SHARD_PATTERN) if split == "train"
                                     else (run.heldout, run.heldout_plan, HELDOUT_PATTERN))
    by_id = {row["clip_id"]: row for row in rows}
    plan = plan_shards(list(by_id), output.clips_per_shard, pattern)
    clips_of: dict[str, tuple[ShardClip, ...]] = {}
    for name, ids in plan.items():
        clips = []
        for cid in ids:
            row = by_id[cid]
            meta = {k: v for k, v in row.items() if k not in _DECISION_FIELDS}
            clips.append(ShardClip(cid, paths[row["video_id"]], int(row["start_frame"]), int(row["end_frame"]),
                                   float(row["fps"]), meta))
        clips_of[name] = tuple(clips)
    digests = {name: content_digest([c.meta for c in clips]) for name, clips in clips_of.items()}
    removed = reconcile_plan(plan_path, shard_dir, plan, output, digests)
    if removed:
        notify(f"shard plan changed ({split} split: kept clips, their json or output settings differ): removed "
               f"{len(removed)} old shard(s), rewriting them")
    return [ShardTask(name, str(shard_dir / name), clips, output) for name, clips in clips_of.items()]


def _write_phase(run: RunDir, kept: list[dict[str, Any]], paths: dict[str, str], cfg: dict[str, Any],
                 engine: Any, notify: Callable[[str], None]) -> tuple[dict[str, str], dict[str, str], int]:
    output = OutputConfig(**(cfg.get("shards") or {}))
    tasks = []
    for split in ("train", "heldout"):
        tasks += _split_tasks(run, split, [row for row in kept if row["split"] == split], paths, output, notify)
    todo = [t for t in tasks if not Path(t.path).exists()]
    errors: dict[str, str] = {}
    for task, result in _progress(engine.map_unordered(write_shard, todo), len(todo), "write",
                                  cfg.get("progress", True)):
        if isinstance(result, WorkerDied) or result.error:
            errors[task.name] = result.message if isinstance(result, WorkerDied) else str(result.error)
            notify(f"shard {task.name} failed: {errors[task.name]}")
    shard_of = {clip.clip_id: task.name for task in tasks if task.name not in errors for clip in task.clips}
    return shard_of, errors, len(tasks) - len(todo)


def _training_fields(clip_rows: list[dict[str, Any]], cfg: dict[str, Any], notify: Callable[[str], None]) -> int:
    """Give every clip row its ``motion_bucket_id`` and every kept one its ``split``; returns the
    number of kept clips without a caption (announced: they train on the empty caption)."""
    scale = float(cfg.get("motion_bucket_scale", DEFAULT_MOTION_BUCKET_SCALE))
    for row in clip_rows:
        row["motion_bucket_id"] = motion_bucket_id(row.get("motion_score"), scale)
    kept = [row for row in clip_rows if row["kept"]]
    fraction = check_fraction(cfg.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION))
    held = heldout_videos((row["video_id"] for row in kept), fraction)
    for row in clip_rows:
        row["split"] = ("heldout" if row["video_id"] in held else "train") if row["kept"] else None
    if kept and not held:
        notify(f"no clip held out for validation (heldout_fraction={fraction}, {len(set(r['video_id'] for r in kept))} "
               "video(s) with kept clips): training on these shards has no validation set unless data.val_shards "
               "names one")
    uncaptioned = sum(1 for row in kept if not row.get("caption"))
    if uncaptioned:
        notify(f"{uncaptioned} of {len(kept)} kept clips have no caption: they train on the empty caption \"\" "
               "(the unconditional text); give <video>.txt sidecars or a captioner (scorers.captions.captioner)")
    return uncaptioned


def _summary_line(summary: dict[str, Any]) -> str:
    errors = summary["errors"]
    detail = f" ({', '.join(f'{code} {n}' for code, n in sorted(errors.items()))})" if errors else ""
    n_err = sum(errors.values())
    return (f"curated {summary['inputs']} inputs: {n_err} error{'s' if n_err != 1 else ''}{detail}, "
            f"{summary['clips']} clips, {summary['kept']} kept ({summary['heldout']} held out) → "
            f"{summary['shards']} shard{'s' if summary['shards'] != 1 else ''} "
            f"+ {summary['heldout_shards']} held-out "
            f"in {summary['seconds']['total']:.1f} s")


def curate(cfg: Any, notify: Callable[[str], None] = print) -> CurationResult:
    """Run the whole curation described by ``cfg`` (``configs/curate.yaml``, a DictConfig or dict).

    ``notify`` receives the few one-line notices (skipped scorers and filters, a changed shard
    plan, failed shards, the final summary line). Returns the summary and that line.
    """
    t_start = time.perf_counter()
    cfg = _plain_config(cfg)
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown curation config keys {unknown}; known: {sorted(CONFIG_KEYS)}")
    check_sections(cfg)
    check_fraction(cfg.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION))
    check_bucket_scale(cfg.get("motion_bucket_scale", DEFAULT_MOTION_BUCKET_SCALE))
    for key in ("input", "output"):
        if cfg.get(key) in (None, "", "???"):
            raise ValueError(f"set {key}=DIR (python -m data_curation input=RAW_DIR output=RUN_DIR)")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    inputs, ignored = list_inputs(cfg["input"], cfg.get("extensions"))
    seconds["list"] = time.perf_counter() - t
    run = RunDir(Path(cfg["output"]))
    with run.exclusive():
        return _curate_exclusively(cfg, run, inputs, ignored, seconds, t_start, notify)


def _curate_exclusively(cfg: dict, run: RunDir, inputs: list, ignored: list[str], seconds: dict[str, float],
                        t_start: float, notify: Callable[[str], None]) -> CurationResult:
    """:func:`curate` from preparing the output on, while this process holds the output's lock."""
    run.prepare()
    from omegaconf import OmegaConf

    atomic_write_bytes(run.config, OmegaConf.to_yaml(OmegaConf.create(cfg)).encode("utf-8"))
    engine_cfg = dict(cfg.get("engine") or {"name": "local"})
    engine = make_engine(**engine_cfg)
    try:
        t = time.perf_counter()
        records, resumed = _score_phase(run, inputs, cfg, engine, notify)
        seconds["score"] = time.perf_counter() - t

        t = time.perf_counter()
        video_rows = [_video_row(r) for r in records]
        clip_rows = [row for r in records for row in _clip_rows(r)]
        filter_summary = _filter_phase(clip_rows, cfg.get("filters"), notify)
        uncaptioned = _training_fields(clip_rows, cfg, notify)
        kept_by_video = Counter(row["video_id"] for row in clip_rows if row["kept"])
        for row in video_rows:
            row["kept"] = kept_by_video[row["video_id"]] > 0
        seconds["filter"] = time.perf_counter() - t

        t = time.perf_counter()
        kept = [row for row in clip_rows if row["kept"]]
        paths = {inp.video_id: inp.path for inp in inputs}
        shard_of, shard_errors, shards_reused = _write_phase(run, kept, paths, cfg, engine, notify)
        for row in clip_rows:
            row["shard"] = shard_of.get(row["clip_id"])
        seconds["write"] = time.perf_counter() - t
    finally:
        engine.close()

    t = time.perf_counter()
    rows = video_rows + clip_rows
    write_manifest(rows, run.manifest)
    errors = Counter(row["error_code"] for row in video_rows if row.get("error_code"))
    summary: dict[str, Any] = {
        "inputs": len(inputs),
        "ignored_files": ignored,
        "resumed_inputs": resumed,
        "errors": dict(sorted(errors.items())),
        "videos_dropped_by": dict(sorted(Counter(r["dropped_by"] for r in video_rows if r.get("dropped_by")).items())),
        "clips": len(clip_rows),
        "kept": len(kept),
        "dropped": len(clip_rows) - len(kept),
        "heldout": sum(row["split"] == "heldout" for row in kept),
        "heldout_videos": len({row["video_id"] for row in kept if row["split"] == "heldout"}),
        "uncaptioned_kept": uncaptioned,
        "filters": filter_summary,
        "shards": len({name for name in shard_of.values() if not name.startswith("heldout-")}),
        "heldout_shards": len({name for name in shard_of.values() if name.startswith("heldout-")}),
        "shards_reused": shards_reused,
        "shard_errors": shard_errors,
        "engine": engine_cfg.get("name", "local"),
        "seconds": seconds,
    }
    seconds["manifest"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    atomic_write_json(run.summary, summary)
    if cfg.get("report", True):
        summary["report_error"] = _write_report(run, notify)
        seconds["total"] = time.perf_counter() - t_start
        atomic_write_json(run.summary, summary)
    line = _summary_line(summary)
    notify(line)
    return CurationResult(run.root, summary, line, rows)


def _write_report(run: RunDir, notify: Callable[[str], None]) -> str | None:
    """Write report.html (helper module :mod:`data_curation.report`); returns the error, if any.

    The shards and the manifest are complete by now, so a failing report is announced, recorded in
    the summary and logged with its traceback, but does not fail the run.
    """
    try:
        from data_curation.report import write_report
    except ImportError as err:
        notify(f"report skipped: data_curation.report could not be imported ({err})")
        return f"ImportError: {err}"
    try:
        write_report(run.root)
    except Exception as err:  # noqa: BLE001 - see the docstring
        logger.exception("writing the report failed")
        notify(f"report failed: {type(err).__name__}: {err}")
        return f"{type(err).__name__}: {err}"
    return None
