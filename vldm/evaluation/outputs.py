"""Evaluation outputs: ``metrics.json`` (every number with its protocol), ``metrics.csv``, plots, wandb.

A result is one checkpoint's record (see :func:`vldm.evaluation.run.evaluate`)::

    {"name": "video", "mode": "t2v", "run": "demo/video", "stage": "video", "step": 380, "cumulative_step": 530, ...,
     "metrics": {"frpd": {"value": 1.2, "higher_is_better": false, "protocol": {...}, "warning": None}, ...},
     "skipped": {"fvd": "metrics.fvd.weights not set"}}
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ID_COLUMNS: tuple[str, ...] = ("name", "run", "stage", "step", "cumulative_step", "num_videos")


def metric_names(results: list[dict[str, Any]]) -> list[str]:
    """Metrics present in any result, in first-seen order."""
    names: list[str] = []
    for r in results:
        for m in r.get("metrics", {}):
            if m not in names:
                names.append(m)
    return names


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return _json_safe(x.item())
    return x


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, results: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    _write_text(path, json.dumps(_json_safe({**(extra or {}), "checkpoints": results}), indent=2) + "\n")
    return path


def write_csv(path: Path, results: list[dict[str, Any]]) -> Path:
    """One row per checkpoint: the id columns, then one column per metric (empty when not measured)."""
    names = metric_names(results)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*ID_COLUMNS, *names])
        for r in results:
            row = ["" if r.get(c) is None else r.get(c) for c in ID_COLUMNS]
            for m in names:
                value = r.get("metrics", {}).get(m, {}).get("value")
                row.append("" if value is None else f"{value:.6g}")
            writer.writerow(row)
    tmp.replace(path)
    return path


def _x(r: dict[str, Any], i: int) -> float:
    x = r.get("cumulative_step")
    return float(i if x is None else x)


@dataclass
class Series:
    """One run's points of one metric: ``label`` (the run name), ``xs`` (cumulative steps), ``ys``, and
    ``start``: the point of the run it started from, when that run's checkpoint at that step is plotted."""

    key: str
    label: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    start: tuple[float, float] | None = None


def _series_label(r: dict[str, Any]) -> str:
    run = str(r.get("run") or r.get("name"))
    return f"{run} (inflated)" if r.get("inflated") else run


def plot_series(results: list[dict[str, Any]], metric: str) -> list[Series]:
    """The finite values of ``metric``, one series per run directory (first-seen order), each sorted by
    step; a run started from another plotted run's checkpoint starts from that point."""
    by_key: dict[str, Series] = {}
    for i, r in enumerate(results):
        value = r.get("metrics", {}).get(metric, {}).get("value")
        if value is None or not math.isfinite(value):
            continue
        key = str(r.get("run_dir") or r.get("name"))
        series = by_key.setdefault(key, Series(key, _series_label(r)))
        series.xs.append(_x(r, i))
        series.ys.append(float(value))
        series.records.append(r)
    for series in by_key.values():
        order = sorted(range(len(series.xs)), key=lambda j: series.xs[j])
        series.xs, series.ys = [series.xs[j] for j in order], [series.ys[j] for j in order]
        series.records = [series.records[j] for j in order]
        first = series.records[0]
        parent = by_key.get(str(first.get("init_run_dir")))
        offset = first.get("offset")
        if parent is not None and offset is not None:
            series.start = next(((x, y) for x, y in zip(parent.xs, parent.ys) if x == float(offset)), None)
    return list(by_key.values())


def _plot_metric(ax: Any, results: list[dict[str, Any]], metric: str, labels: bool = True) -> bool:
    """Metric vs training step (counted from the start of each run's lineage): one line per run
    directory labelled with its run name, a dashed link from the point a run started from, each
    point labelled with its checkpoint name."""
    all_series = plot_series(results, metric)
    if not all_series:
        return False
    for series in all_series:
        (line,) = ax.plot(series.xs, series.ys, "o-", label=series.label, zorder=2)
        if series.start is not None:
            ax.plot([series.start[0], series.xs[0]], [series.start[1], series.ys[0]], "--",
                    color=line.get_color(), lw=1, zorder=1)
    if labels:
        for series in all_series:
            for x, y, r in zip(series.xs, series.ys, series.records):
                ax.annotate(f"{r['name']}\n{y:.4g}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    first = all_series[0].records[0]["metrics"][metric]
    better = first.get("higher_is_better")
    arrow = " (higher is better)" if better else " (lower is better)" if better is False else ""
    if metric.endswith("_ratio"):
        arrow = " (1 = as the reference)"
    ax.margins(x=0.15, y=0.12)
    ax.set_title(f"{metric}{arrow}", fontsize=9)
    ax.set_xlabel("training step (from the start of the run's lineage)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def write_plots(plot_dir: Path, results: list[dict[str, Any]]) -> dict[str, Path]:
    """``plot_dir/<metric>.png`` for each metric and ``plot_dir/overview.png`` (all metrics)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = metric_names(results)
    for metric in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            if _plot_metric(ax, results, metric):
                proto = next(r["metrics"][metric].get("protocol", {}) for r in results
                             if metric in r.get("metrics", {}))
                fig.suptitle(_protocol_line(proto), fontsize=7)
                fig.subplots_adjust(left=0.14, right=0.96, bottom=0.13, top=0.86)  # fixed: tight_layout is slow
                path = plot_dir / f"{metric}.png"
                fig.savefig(path, dpi=90)
                written[f"plot:{metric}"] = path
        finally:
            plt.close(fig)
    if names:
        cols = min(4, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        try:
            for ax, metric in zip(axes.flat, names):
                _plot_metric(ax, results, metric, labels=False)
            for ax in list(axes.flat)[len(names):]:
                ax.axis("off")
            fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.93, hspace=0.55, wspace=0.3)
            path = plot_dir / "overview.png"
            fig.savefig(path, dpi=80)
            written["plot:overview"] = path
        finally:
            plt.close(fig)
    return written


def _protocol_line(proto: dict[str, Any]) -> str:
    if not proto:
        return ""
    mode = (proto.get("extra") or {}).get("mode")
    return (f"{f'mode={mode}: ' if mode else ''}{proto.get('num_videos')} videos x {proto.get('num_frames')} frames, "
            f"{proto.get('resolution')}px, {proto.get('fps')} fps, seeds {proto.get('seeds')}, "
            f"features {proto.get('feature_net')}")


def log_wandb(out_dir: Path, results: list[dict[str, Any]], plots: dict[str, Path], project: str = "vldm-eval",
              name: str | None = None, offline: bool | None = None,
              config: dict[str, Any] | None = None) -> Path | None:
    """Log the table, every metric against ``cumulative_step`` and the plots to a wandb run.

    Offline (files under ``out_dir/wandb``, ``wandb sync`` later) unless ``WANDB_API_KEY`` is set or
    ``WANDB_MODE=online``, as training's logger does. Returns the run's directory.
    """
    import wandb

    if offline is None:
        offline = not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online")
    run = wandb.init(project=project, name=name, dir=str(out_dir), mode="offline" if offline else "online",
                     config=_json_safe(config or {}), job_type="eval", reinit=True)
    try:
        run.define_metric("eval/cumulative_step")
        run.define_metric("eval/*", step_metric="eval/cumulative_step")
        for i, r in enumerate(results):
            row = {f"eval/{m}": v["value"] for m, v in r.get("metrics", {}).items() if v.get("value") is not None}
            run.log({**row, "eval/cumulative_step": _x(r, i)})
        names = metric_names(results)
        table = wandb.Table(columns=[*ID_COLUMNS, *names])
        for r in results:
            table.add_data(*[r.get(c) for c in ID_COLUMNS],
                           *[r.get("metrics", {}).get(m, {}).get("value") for m in names])
        run.log({"eval/table": table, **{f"eval/{k.replace(':', '/')}": wandb.Image(str(p)) for k, p in plots.items()}})
        return Path(run.dir).parent
    finally:
        run.finish()


def write_outputs(out_dir: str | Path, results: list[dict[str, Any]], extra: dict[str, Any] | None = None,
                  wandb_cfg: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.csv``, ``plots/<metric>.png`` and ``plots/overview.png`` under
    ``out_dir``; log to wandb when ``wandb_cfg["enabled"]``. Returns ``{what: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(out / "metrics.json", results, extra), "csv": write_csv(out / "metrics.csv", results)}
    written.update(write_plots(out / "plots", results))
    if wandb_cfg and wandb_cfg.get("enabled"):
        try:
            run_dir = log_wandb(out, results, {k: v for k, v in written.items() if k.startswith("plot:")},
                                project=wandb_cfg.get("project", "vldm-eval"), name=wandb_cfg.get("name"),
                                offline=wandb_cfg.get("offline"), config=(extra or {}).get("config"))
            if run_dir is not None:
                written["wandb"] = run_dir
        except Exception as err:  # noqa: BLE001 - the files above hold every number
            say(f"[vldm] eval: wandb logging failed ({type(err).__name__}: {err}); metrics.json/csv are written")
    return written
