"""The curation run's HTML report: one self-contained file (inline CSS and SVG, thumbnails as data URIs).

It shows what the filters of the SVD data curation (Blattmann et al. 2023, "Stable Video Diffusion",
Sec. 3 / App. E) did to a run: input, error, clip and kept counts; a histogram of every scored column
with the filters' thresholds drawn on it; how many clips each filter removed (alone, first, in total)
and how often two filters removed the same clip; thumbnails of the kept and dropped clips nearest
each threshold; and the inputs that could not be curated.

Inputs: the run directory's ``manifest.parquet`` (rows as :data:`~data_curation.records.MANIFEST_COLUMNS`
plus scorer and probe columns) and ``summary.json`` (the filters with their resolved thresholds), or
the same given directly. Nothing is fetched and no script runs in the page.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_curation.filters import FilterSpec, quantile_cut, quantiles_apply
from data_curation.records import MANIFEST_COLUMNS
from data_curation.report_svg import bool_svg, esc, fmt_value, histogram_svg

# Columns of clip rows that are not scores (ids, spans, decisions) or that describe the whole input.
_NOT_SCORES = set(MANIFEST_COLUMNS) | {
    "duration_s", "fps", "num_frames", "width", "height", "codec", "bits_per_pixel", "size_bytes",
    "mtime", "size", "kept_any", "decoded_frames", "num_clips", "transitions",
}
CLIP_SECONDS = "clip_seconds"  # derived: end_s - start_s of each clip
PREFERRED_ORDER = ("motion_score", "static", "text_ratio", "text_boxes", "aesthetic", "clip_similarity",
                   CLIP_SECONDS)
VIDEO_COLUMNS = ("duration_s", "fps", "bits_per_pixel")  # histograms over the inputs (video rows)
MAX_THUMBS = 6  # per side of a threshold
MAX_ERROR_ROWS = 1000  # error rows listed; the rest are counted



@dataclass
class DrawnFilter:
    """A clip filter as the report draws it: the run's rule and the thresholds it resolved to."""

    rule: FilterSpec
    thresholds: list[tuple[float, str]] = field(default_factory=list)  # (value, label)
    computed: bool = False  # a quantile threshold recomputed here (not found in the summary)
    skipped: str | None = None  # why the run skipped this filter (e.g. no clip has the column)

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def column(self) -> str:
        return self.rule.column


# ----------------------------------------------------------------------------------------- inputs

def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _number(v: Any) -> float | None:
    if _is_missing(v) or isinstance(v, str):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _dropped_all(row: dict[str, Any]) -> list[str]:
    v = row.get("dropped_by_all")
    if _is_missing(v) or v == "":
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def _clip_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.get("row_type") != "clip" or not _is_missing(r.get("error_code")):
            continue
        r = dict(r)
        a, b = _number(r.get("start_s")), _number(r.get("end_s"))
        if a is not None and b is not None:
            r[CLIP_SECONDS] = b - a
        out.append(r)
    return out


def quantile_threshold(values: list[float], fraction: float, lowest: bool) -> float | None:
    """The boundary a quantile cut implies when the summary does not say it: the pipeline's own rule
    (:func:`data_curation.filters.quantile_cut`); None when it drops nothing or everything."""
    cut = quantile_cut(values, fraction, lowest)
    return cut if cut is not None and math.isfinite(cut) else None


def normalise_filters(filters: Any, clips: list[dict[str, Any]]) -> list[DrawnFilter]:
    """Filters from config/summary form (a list of dicts with ``name``, or a dict name -> rule).

    Resolved bounds are read from ``threshold_min``/``threshold_max`` as the pipeline's
    ``summary.json`` writes them (:mod:`data_curation.filters`: the quantile cut if any, else
    ``min``/``max``; null when a cut drops nothing). A quantile cut given without them (a config
    rather than a summary) is recomputed from the rows with :func:`quantile_threshold`.
    """
    if filters is None:
        return []
    if isinstance(filters, dict):
        items = [dict(v, name=v.get("name", k)) if isinstance(v, dict) else {"name": k} for k, v in filters.items()]
    else:
        items = [dict(f) for f in filters if isinstance(f, dict)]
    specs = []
    for f in items:
        column = f.get("column")
        if not column:
            continue
        name = str(f.get("name") or column)
        try:
            rule = FilterSpec(name=name, column=str(column), min=_number(f.get("min")), max=_number(f.get("max")),
                              drop_lowest=_number(f.get("drop_lowest")), drop_highest=_number(f.get("drop_highest")),
                              min_clips=int(_number(f.get("min_clips")) or 0))
        except ValueError:  # a rule the pipeline would refuse: nothing to draw
            continue
        spec = DrawnFilter(rule)
        lo, hi = _number(f.get("threshold_min")), _number(f.get("threshold_max"))
        values = [v for v in (_number(r.get(rule.column)) for r in clips) if v is not None]
        compute = not ("threshold_min" in f or "threshold_max" in f) and quantiles_apply(rule, len(values))
        if rule.drop_lowest and compute:
            lo, spec.computed = quantile_threshold(values, rule.drop_lowest, lowest=True), True
        if rule.drop_highest and compute:
            hi, spec.computed = quantile_threshold(values, rule.drop_highest, lowest=False), True
        if f.get("skipped"):
            spec.skipped = str(f["skipped"])
        if rule.min is not None:
            spec.thresholds.append((rule.min, f"min {fmt_value(rule.min)}"))
        if lo is not None and math.isfinite(lo) and lo != rule.min:
            label = f"lowest {rule.drop_lowest:.0%} → {fmt_value(lo)}" if rule.drop_lowest else f"min {fmt_value(lo)}"
            spec.thresholds.append((lo, label))
        if rule.max is not None:
            spec.thresholds.append((rule.max, f"max {fmt_value(rule.max)}"))
        if hi is not None and math.isfinite(hi) and hi != rule.max:
            label = f"highest {rule.drop_highest:.0%} → {fmt_value(hi)}" if rule.drop_highest else f"max {fmt_value(hi)}"
            spec.thresholds.append((hi, label))
        specs.append(spec)
    return specs


def _load(output_dir: Path, rows: list[dict[str, Any]] | None,
          filters: list[dict] | None) -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
    summary: dict[str, Any] = {}
    path = output_dir / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    if rows is None:
        import pyarrow.parquet as pq

        rows = pq.read_table(output_dir / "manifest.parquet").to_pylist()
    if filters is None:
        filters = summary.get("filters")
    return rows, filters, summary


def scored_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Columns of the (error-free) clip rows the report draws: numeric or boolean scores."""
    clips = _clip_rows(rows)
    found: set[str] = set()
    for r in clips:
        for k, v in r.items():
            if k in _NOT_SCORES or k == "kept" or _is_missing(v) or isinstance(v, str):
                continue
            if isinstance(v, (bool, int, float)):
                found.add(k)
    order = [c for c in PREFERRED_ORDER if c in found]
    return order + sorted(found - set(order))


def filter_counts(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, int]]:
    """Per filter, over clip rows: ``alone`` (only this filter removes it), ``first`` (``dropped_by``),
    ``total`` (listed in ``dropped_by_all``)."""
    out = {n: {"alone": 0, "first": 0, "total": 0} for n in names}
    for r in _clip_rows(rows):
        every = _dropped_all(r)
        for n in every:
            if n in out:
                out[n]["total"] += 1
        if len(every) == 1 and every[0] in out:
            out[every[0]]["alone"] += 1
        first = r.get("dropped_by")
        if not _is_missing(first) and first in out:
            out[first]["first"] += 1
    return out


def overlap_matrix(rows: list[dict[str, Any]], names: list[str]) -> list[list[int]]:
    """``m[i][j]`` = clips removed by both filter i and filter j (the diagonal: by filter i)."""
    idx = {n: i for i, n in enumerate(names)}
    m = [[0] * len(names) for _ in names]
    for r in _clip_rows(rows):
        hit = sorted({idx[n] for n in _dropped_all(r) if n in idx})
        for i in hit:
            for j in hit:
                m[i][j] += 1
    return m


def _thumb_html(thumbs: Path, row: dict[str, Any], column: str) -> str:
    cid = str(row.get("clip_id"))
    path = thumbs / f"{cid}.jpg"
    score = esc(row.get(column))
    title = esc(f"{cid} {row.get('source')} {fmt_value(row.get('start_s'))}–{fmt_value(row.get('end_s'))} s")
    if path.is_file():
        data = path.read_bytes()
        if data[:2] == b"\xff\xd8":
            src = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
            return (f'<figure title="{title}"><img class="thumb" alt="{esc(cid)}" src="{src}"/>'
                    f'<figcaption>{score}</figcaption></figure>')
    return f'<figure title="{title}"><div class="nothumb">no thumbnail</div><figcaption>{score}</figcaption></figure>'


def _near_threshold(clips: list[dict[str, Any]], spec: DrawnFilter, value: float | None,
                    thumbs: Path) -> str:
    """Kept (by this filter) and dropped clips nearest ``value`` (or the first ones, for rules)."""
    have = [r for r in clips if not _is_missing(r.get(spec.column))]

    def key(r: dict[str, Any]) -> tuple:
        v = _number(r.get(spec.column))
        return (abs(v - value) if value is not None and v is not None else 0.0, str(r.get("clip_id")))

    passed = sorted((r for r in have if spec.name not in _dropped_all(r)), key=key)[:MAX_THUMBS]
    failed = sorted((r for r in have if spec.name in _dropped_all(r)), key=key)[:MAX_THUMBS]
    out = []
    for label, group in (("passes", passed), ("removed", failed)):
        cells = "".join(_thumb_html(thumbs, r, spec.column) for r in group) or '<span class="none">none</span>'
        out.append(f'<div class="thumbrow"><span class="side">{label}</span>{cells}</div>')
    return "".join(out)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.err td{text-align:left;font-family:monospace}
svg.hist{background:#fafafa;border:1px solid #ddd;margin:4px 0}svg .kept{fill:#4a7fb5}
svg .dropped{fill:#e0894a}svg .axis{stroke:#444}svg .threshold{stroke:#c00;stroke-width:2;stroke-dasharray:4 2}
svg text{font:11px sans-serif;fill:#333}svg .threshold-label{fill:#c00}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid>div{flex:0 0 auto}
.thumbrow{display:flex;align-items:center;gap:6px;margin:4px 0}.side{width:64px;font-weight:bold}
figure{margin:0;text-align:center;font-size:11px}img.thumb{height:72px;border:1px solid #999}
.nothumb{width:72px;height:72px;background:#ddd;font-size:10px;display:flex;align-items:center}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
"""


def render_report(rows: list[dict[str, Any]], filters: Any = None, summary: dict[str, Any] | None = None,
                  thumbs_dir: str | Path | None = None, title: str = "Curation report") -> str:
    """The report's HTML text (see :func:`write_report`)."""
    summary = summary or {}
    thumbs = Path(thumbs_dir) if thumbs_dir is not None else Path("/nonexistent")
    videos = [r for r in rows if r.get("row_type") == "video"]
    clips = _clip_rows(rows)
    errors = [r for r in rows if not _is_missing(r.get("error_code"))]
    by_code: dict[str, int] = {}
    for r in errors:
        by_code[str(r["error_code"])] = by_code.get(str(r["error_code"]), 0) + 1
    kept = sum(1 for r in clips if r.get("kept") is True)
    specs = normalise_filters(filters, clips)
    names = [s.name for s in specs]
    for r in clips:
        for n in _dropped_all(r):
            if n not in names:
                names.append(n)

    h = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/><title>{esc(title)}</title>'
         f'<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>']
    err_text = ", ".join(f"{esc(c)} {n}" for c, n in sorted(by_code.items())) or "none"
    h.append('<table class="counts"><tr><th class="l">inputs</th><td>%d</td></tr>'
             '<tr><th class="l">errors</th><td>%d (%s)</td></tr><tr><th class="l">clips</th><td>%d</td></tr>'
             '<tr><th class="l">kept</th><td>%d</td></tr><tr><th class="l">dropped</th><td>%d</td></tr>'
             % (len(videos), len(errors), err_text, len(clips), kept, len(clips) - kept))
    for key in ("shards", "engine"):
        if key in summary and not isinstance(summary[key], (dict, list)):
            h.append(f'<tr><th class="l">{esc(key)}</th><td>{esc(summary[key])}</td></tr>')
    if isinstance(summary.get("seconds"), dict):
        phases = ", ".join(f"{esc(k)} {v:.1f}" for k, v in summary["seconds"].items() if _number(v) is not None)
        h.append(f'<tr><th class="l">seconds</th><td>{phases}</td></tr>')
    h.append("</table>")
    pre = {}
    for r in videos:
        if not _is_missing(r.get("dropped_by")) and _is_missing(r.get("error_code")):
            pre[str(r["dropped_by"])] = pre.get(str(r["dropped_by"]), 0) + 1
    if pre:
        h.append("<p>inputs that gave no clips (prefilter or no scene long enough): "
                 + ", ".join(f"{esc(k)} {v}" for k, v in sorted(pre.items())) + "</p>")

    h.append('<h2>Score distributions</h2><p class="legend">clips: <span style="background:#4a7fb5">'
             '</span>kept<span style="background:#e0894a"></span>dropped; dashed red lines: filter thresholds</p>')
    columns = scored_columns(rows)
    if not columns:
        h.append("<p>No clip was scored.</p>")
    h.append('<div class="grid">')
    for col in columns:
        col_specs = [s for s in specs if s.column == col]
        pairs_raw = [(r.get(col), r.get("kept") is True) for r in clips if not _is_missing(r.get(col))]
        if all(isinstance(v, bool) for v, _ in pairs_raw):
            svg = bool_svg(col, [(bool(v), k) for v, k in pairs_raw])
            stats = f"{len(pairs_raw)} clips, {sum(1 for v, _ in pairs_raw if v)} True"
        else:
            pairs = [(float(v), k) for v, k in pairs_raw]
            svg = histogram_svg(col, pairs, col_specs)
            vs = sorted(v for v, _ in pairs)
            stats = (f"{len(vs)} clips; min {fmt_value(vs[0])}, median {fmt_value(vs[len(vs) // 2])}, "
                     f"max {fmt_value(vs[-1])}")
        note = "".join(f"; {esc(s.name)} threshold recomputed from the rows" for s in col_specs if s.computed)
        h.append(f'<div><h3>{esc(col)}</h3>{svg}<p>{esc(stats)}{note}</p></div>')
    h.append("</div>")
    vcols = [c for c in VIDEO_COLUMNS
             if any(_number(r.get(c)) is not None for r in videos if _is_missing(r.get("error_code")))]
    if vcols:
        h.append('<h3>Inputs</h3><div class="grid">')
        for c in vcols:
            pairs = [(float(_number(r[c])), r.get("kept") is True) for r in videos
                     if _is_missing(r.get("error_code")) and _number(r.get(c)) is not None]
            h.append(f"<div>{histogram_svg(c, pairs, [], scope='video')}</div>")
        h.append("</div>")

    h.append("<h2>Filters</h2>")
    if names:
        counts = filter_counts(rows, names)
        n = max(len(clips), 1)
        h.append('<table class="filters"><tr><th class="l">filter</th><th class="l">column</th>'
                 '<th class="l">rule</th><th>threshold</th><th>removed alone</th><th>removed first</th>'
                 '<th>removed in total</th><th>share of clips</th></tr>')
        spec_by = {s.name: s for s in specs}
        for name in names:
            s = spec_by.get(name)
            rule = ""
            if s is not None:
                rule = ", ".join(f"{k} {fmt_value(getattr(s.rule, k))}" for k in ("min", "max", "drop_lowest", "drop_highest")
                                 if getattr(s.rule, k) is not None)
            th = ", ".join(fmt_value(v) for v, _ in s.thresholds) if s is not None else ""
            if s is not None and s.skipped:
                rule = f"{rule} (skipped: {s.skipped})"
            c = counts[name]
            h.append(f'<tr><td class="l">{esc(name)}</td><td class="l">{esc(s.column if s else "")}</td>'
                     f'<td class="l">{esc(rule)}</td><td>{esc(th)}</td><td>{c["alone"]}</td><td>{c["first"]}</td>'
                     f'<td>{c["total"]}</td><td>{c["total"] / n:.1%}</td></tr>')
        active = [nm for nm in names if nm not in spec_by or not spec_by[nm].skipped]
        h.append("</table><h3>Overlap (clips removed by both)</h3><table class=\"overlap\"><tr><th></th>")
        h.append("".join(f"<th>{esc(nm)}</th>" for nm in active) + "</tr>")
        for nm, line in zip(active, overlap_matrix(rows, active)):
            h.append(f'<tr><th class="l">{esc(nm)}</th>' + "".join(f"<td>{v}</td>" for v in line) + "</tr>")
        h.append("</table>")
    else:
        h.append("<p>No filter was applied.</p>")

    h.append("<h2>Clips near the thresholds</h2>")
    shown = False
    for s in specs:
        if s.thresholds and not s.skipped:
            for v, label in s.thresholds:
                h.append(f"<h3>{esc(s.name)}: {esc(s.column)} {esc(label)}</h3>{_near_threshold(clips, s, v, thumbs)}")
                shown = True
    if not shown:
        h.append("<p>No threshold to show.</p>")

    h.append("<h2>Errors</h2>")
    if errors:
        h.append('<table class="err"><tr><th class="l">source</th><th class="l">code</th>'
                 '<th class="l">message</th></tr>')
        listed = sorted(errors, key=lambda r: (str(r.get("source")), str(r.get("clip_id"))))
        for r in listed[:MAX_ERROR_ROWS]:
            h.append(f'<tr><td>{esc(str(r.get("source")))}</td><td>{esc(str(r.get("error_code")))}</td>'
                     f'<td>{esc(str(r.get("error_message") or ""))}</td></tr>')
        h.append("</table>")
        if len(listed) > MAX_ERROR_ROWS:
            h.append(f"<p>… and {len(listed) - MAX_ERROR_ROWS} more (see the manifest).</p>")
    else:
        h.append("<p>None.</p>")
    h.append("</body></html>\n")
    return "".join(h)


def write_report(output_dir: str | Path, manifest_rows: list[dict] | None = None,
                 filters: list[dict] | None = None) -> Path:
    """Write ``output_dir/report.html`` from ``manifest.parquet`` and ``summary.json`` (or the given
    rows and filters) and return its path; thumbnails come from ``output_dir/work/thumbs``."""
    out = Path(output_dir)
    rows, filt, summary = _load(out, manifest_rows, filters)
    text = render_report(rows, filt, summary, thumbs_dir=out / "work" / "thumbs",
                         title=f"Curation report: {out.name}")
    path = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
