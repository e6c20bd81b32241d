"""The curation HTML report: structure, threshold geometry, filter counts, thumbnails, escaping."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_curation.report import quantile_threshold, render_report, write_report
from data_curation.report_svg import PLOT_X0, PLOT_X1

MOTION = [0.001, 0.002, 0.004, 0.010, 0.020, 0.030, 0.040, 0.050]
TEXT = [0.00, 0.01, 0.20, 0.00, 0.09, 0.00, 0.30, 0.02]
STATIC = [True, True, False, False, False, False, False, False]
# every filter that removes each clip (hand-made; motion_q: the lowest 25% -> threshold 0.004)
DROPPED = [["motion_q", "static"], ["motion_q", "static", "text_max"], ["text_max"], [], ["text_max"], [],
           ["text_max"], []]
FILTERS = [
    {"name": "motion_q", "column": "motion_score", "drop_lowest": 0.25, "threshold_min": 0.004},
    {"name": "static", "column": "static", "max": 0},  # booleans count 0 / 1
    {"name": "text_max", "column": "text_ratio", "max": 0.07},
]


def _rows() -> list[dict]:
    rows: list[dict] = [
        {"row_type": "video", "video_id": "v1", "source": "a.mp4", "kept": True, "duration_s": 4.0, "fps": 24.0,
         "bits_per_pixel": 0.1},
        {"row_type": "video", "video_id": "v2", "source": "b.mp4", "kept": True, "duration_s": 6.0, "fps": 24.0,
         "bits_per_pixel": 0.2},
        {"row_type": "video", "video_id": "v3", "source": "bad <b>.mp4", "kept": False, "error_code": "truncated",
         "error_message": "cut off <script>alert(1)</script> & more"},
        {"row_type": "video", "video_id": "v4", "source": "empty.mp4", "kept": False, "error_code": "empty_file",
         "error_message": "0 bytes"},
    ]
    for i in range(8):
        vid = "v1" if i < 4 else "v2"
        rows.append({
            "row_type": "clip", "video_id": vid, "clip_id": f"{vid}_{i:04d}", "source": f"{vid}.mp4",
            "clip_index": i, "start_s": 0.0, "end_s": 2.0 + 0.5 * i, "motion_score": MOTION[i],
            "text_ratio": TEXT[i], "static": STATIC[i], "caption": "a <i>clip</i>", "kept": not DROPPED[i],
            "dropped_by": DROPPED[i][0] if DROPPED[i] else None, "dropped_by_all": ",".join(DROPPED[i]),
            "error_code": None,
        })
    return rows


def _write_thumbs(out: Path, rows: list[dict]) -> None:
    thumbs = out / "work" / "thumbs"
    thumbs.mkdir(parents=True)
    for k, r in enumerate(x for x in rows if x["row_type"] == "clip"):
        img = np.full((24, 32, 3), 40 * k % 255, np.uint8)
        Image.fromarray(img).save(thumbs / f"{r['clip_id']}.jpg", quality=80)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict] = []
        self.lines: list[tuple[str, dict]] = []  # (column of the enclosing svg, attrs)
        self.imgs: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.stack: list[str] = []
        self._svg: dict | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "line", "rect", "meta", "br"):
            self.stack.append(tag)
        if tag == "svg":
            self._svg = a
            self.svgs.append(a)
        elif tag == "line" and self._svg is not None:
            self.lines.append((self._svg.get("data-column"), a))
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._table = a.get("class", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("img", "line", "rect", "meta", "br"):
            return
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()
        if tag == "svg":
            self._svg = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Collector:
    p = _Collector()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    return p


def test_report_structure_thresholds_overlap_thumbs_escaping(tmp_path: Path) -> None:
    rows = _rows()
    _write_thumbs(tmp_path, rows)
    path = write_report(tmp_path, manifest_rows=rows, filters=FILTERS)
    assert path == tmp_path / "report.html" and not (tmp_path / "report.html.tmp").exists()
    text = path.read_text(encoding="utf-8")
    p = _parse(text)

    # one svg per scored clip column (static drawn as two bars), one per input column
    clip_cols = [s["data-column"] for s in p.svgs if s["data-scope"] == "clip"]
    assert clip_cols == ["motion_score", "static", "text_ratio", "clip_seconds"]
    assert sorted(s["data-column"] for s in p.svgs if s["data-scope"] == "video") == ["bits_per_pixel",
                                                                                       "duration_s", "fps"]
    # threshold lines sit where the axis puts the threshold value: axis = [min, max] of values + thresholds
    for col, values, t in (("motion_score", MOTION, 0.004), ("text_ratio", TEXT, 0.07)):
        lo, hi = min(values + [t]), max(values + [t])
        (svg,) = [s for s in p.svgs if s["data-column"] == col]
        assert float(svg["data-lo"]) == pytest.approx(lo) and float(svg["data-hi"]) == pytest.approx(hi)
        (line,) = [a for c, a in p.lines if c == col and a.get("class") == "threshold"]
        expected = PLOT_X0 + (t - lo) / (hi - lo) * (PLOT_X1 - PLOT_X0)
        assert float(line["x1"]) == pytest.approx(expected, abs=1e-3)
        assert float(line["x2"]) == float(line["x1"])
        assert float(line["data-value"]) == pytest.approx(t)
    assert not [a for c, a in p.lines if c == "static" and a.get("class") == "threshold"]

    # removal counts (alone / first / total) and the overlap matrix, counted by hand from DROPPED
    table = {r[0]: r[3:7] for r in p.tables["filters"][1:]}
    assert table["motion_q"][1:4] == ["0", "2", "2"]  # alone 0, first 2, total 2
    assert table["static"][1:4] == ["0", "0", "2"]
    assert table["text_max"][1:4] == ["3", "3", "4"]
    assert table["motion_q"][0] == "0.004" and table["text_max"][0] == "0.07"
    overlap = p.tables["overlap"]
    assert overlap[0] == ["", "motion_q", "static", "text_max"]
    assert [[int(v) for v in r[1:]] for r in overlap[1:]] == [[2, 2, 1], [2, 2, 1], [1, 1, 4]]

    # header counts
    counts = {r[0]: r[1] for r in p.tables["counts"]}
    assert counts["inputs"] == "4" and counts["clips"] == "8" and counts["kept"] == "3"
    assert counts["errors"] == "2 (empty_file 1, truncated 1)"

    # thumbnails: valid base64 JPEGs of the thumbs written, at most 6 per side
    assert 0 < len(p.imgs) <= 6 * 2 * 3
    for img in p.imgs:
        assert img["src"].startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1], validate=True)))
        assert im.format == "JPEG" and im.size == (32, 24)
    # nearest to motion threshold 0.004: passes 0.004 itself (v1_0002) first, removed 0.002 (v1_0001) first
    i = text.index("motion_q: motion_score")
    section = text[i:text.index("<h3>", i + 5)]
    assert section.index('alt="v1_0002"') < section.index('alt="v1_0003"')
    assert section.index('alt="v1_0001"') < section.index('alt="v1_0000"')

    # errors escaped, nothing executable
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    assert "bad &lt;b&gt;.mp4" in text
    err = p.tables["err"]
    assert [r[:2] for r in err[1:]] == [["bad <b>.mp4", "truncated"], ["empty.mp4", "empty_file"]]
    assert "<script" not in text.lower().replace("&lt;script", "")  # no script tags at all


def test_report_from_run_dir_recomputes_missing_quantile(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows()
    keys = sorted({k for r in rows for k in r})
    pq.write_table(pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys}), tmp_path / "manifest.parquet")
    filters = [dict(f) for f in FILTERS]
    del filters[0]["threshold_min"]  # the summary lacks the resolved value: the report recomputes it
    (tmp_path / "summary.json").write_text(json.dumps({"filters": filters}))
    text = write_report(tmp_path).read_text()
    p = _parse(text)
    assert quantile_threshold(MOTION, 0.25, lowest=True) == 0.004  # floor(0.25 * 8) = 2 dropped
    (line,) = [a for c, a in p.lines if c == "motion_score" and a.get("class") == "threshold"]
    assert float(line["data-value"]) == pytest.approx(0.004)
    assert "motion_q threshold recomputed from the rows" in text
    assert "no thumbnail" in text and not p.imgs  # no work/thumbs in this run dir


def test_report_all_errors_and_absent_columns(tmp_path: Path) -> None:
    rows = [r for r in _rows() if r.get("error_code")]
    text = render_report(rows, filters=FILTERS, summary={})
    p = _parse(text)
    assert p.svgs == [] and "No clip was scored." in text
    assert {r[0]: r[1] for r in p.tables["counts"]}["inputs"] == "2"
    assert len(p.tables["err"]) == 3
    # no filters, no thresholds: still a complete page
    clips_only = [r for r in _rows() if r["row_type"] == "clip"]
    for r in clips_only:
        r.pop("text_ratio")
    p = _parse(render_report(clips_only))
    assert [s["data-column"] for s in p.svgs] == ["motion_score", "static", "clip_seconds"]


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (/usr/bin/chromium, chromium): "
                                                "the headless screenshot check needs one")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    rows = _rows()
    _write_thumbs(tmp_path, rows)
    page = write_report(tmp_path, manifest_rows=rows, filters=FILTERS)
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1100,1400", page.as_uri()], check=True, timeout=120, capture_output=True)
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[0] > 100 and im.std() > 5  # not blank


def test_bench_summary_ratio_and_throughput() -> None:
    from bench.curate import format_table, summarise

    def video(decode: float, probe: float, cuts: float, motion: float, text: float, clips: list[str]) -> dict:
        return {"frames": 100, "bits_per_pixel": 0.1,
                "seconds": {"decode": decode, "probe": probe, "cuts": cuts, "scorer:motion": motion,
                            "scorer:text": text, "thumbs": 0.0, "write_decode": 0.5, "write_encode": 1.5},
                "clips": [{"clip_id": c, "write_decode": 0.5 / len(clips), "write_encode": 1.5 / len(clips)}
                          for c in clips]}

    videos = [video(1.0, 0.1, 0.2, 0.3, 0.4, ["a", "b"]), video(3.0, 0.1, 0.2, 0.3, 0.4, ["c", "d"])]
    pipe = {"wall_s": 2.0, "kept_clip_ids": ["a", "c", "d"], "line": "x", "summary": {"clips": 4, "seconds": {}}}
    s = summarise(videos, ["motion", "text"], pipe, workers=2)
    assert s["clips"] == 4 and s["frames"] == 200 and s["kept"] == 3
    assert s["ratio_scorers_to_decode"] == pytest.approx(2.0 / 4.0)  # (0.2 + 0.4 + 0.6 + 0.8) / 4
    assert s["ratio_decode_and_scorers_to_decode"] == pytest.approx(1.5)
    assert s["clips_per_min_per_core_score_phase"] == pytest.approx(60 * 4 / 6.0)
    # the write phase counts only the kept clips: a 0.25 + 0.75, c and d 0.5 + 1.5 -> 3.0 s
    assert s["clips_per_min_per_core_stage_sum"] == pytest.approx(60 * 4 / 9.0)
    assert s["pipeline"]["clips_per_min_per_core"] == pytest.approx(60 * 4 / 2.0 / min(2, os.cpu_count() or 1))
    assert sum(v["share"] for v in s["stages"].values()) == pytest.approx(1.0)
    assert "**0.50x**" in format_table(s)


def test_bench_smoke_run(tmp_path: Path) -> None:
    from bench.curate import main

    out = tmp_path / "curate.json"
    record = main(["--videos", "2", "--seconds", "6", "--size", "64", "--fps", "8", "--workers", "1",
                   "--repeats", "1", "--no-pipeline", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["summary"]["videos"] == 2 and saved["summary"]["clips"] >= 2
    assert set(saved["scorers"]) >= {"motion", "text"}
    assert saved["summary"]["stages"]["decode"]["seconds"] > 0
    assert record["summary"]["ratio_scorers_to_decode"] == pytest.approx(saved["summary"]["ratio_scorers_to_decode"])
