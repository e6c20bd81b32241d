"""Clip filters: absolute and quantile cuts, ties, absent columns, dropped_by / dropped_by_all, counts."""

from __future__ import annotations

import pytest

from data_curation.filters import FilterSpec, apply_filters, filter_specs


def _rows(column: str, values: list) -> list[dict]:
    return [{"clip_id": f"c{i:02d}", column: v} for i, v in enumerate(values)]


def test_absolute_min_max_and_bools() -> None:
    rows = [{"x": v, "flag": f} for v, f in [(0.0, False), (0.5, True), (1.0, False), (2.0, True)]]
    out = apply_filters(rows, [FilterSpec("range", "x", min=0.5, max=1.0), FilterSpec("flag", "flag", max=0)])
    assert out.kept == [False, False, True, False]
    assert out.dropped_by == ["range", "flag", None, "range"]
    assert out.dropped_by_all == ["range", "flag", None, "range,flag"]
    assert out.counts == {"range": {"removed": 2, "removed_first": 2, "removed_alone": 1},
                          "flag": {"removed": 2, "removed_first": 1, "removed_alone": 1}}
    assert out.thresholds["range"] == {"threshold_min": 0.5, "threshold_max": 1.0}


def test_quantile_drop_lowest_exact_count() -> None:
    rows = _rows("m", [5.0, 1.0, 3.0, 2.0, 4.0, 8.0, 7.0, 6.0])  # n=8, 25% -> k=2: drop 1.0, 2.0
    out = apply_filters(rows, [FilterSpec("motion", "m", drop_lowest=0.25)])
    dropped = sorted(r["m"] for r, k in zip(rows, out.kept) if not k)
    assert dropped == [1.0, 2.0]
    assert out.thresholds["motion"]["threshold_min"] == 3.0  # lowest value kept
    out = apply_filters(rows, [FilterSpec("hi", "m", drop_highest=0.3)])  # k = floor(2.4) = 2
    assert sorted(r["m"] for r, k in zip(rows, out.kept) if not k) == [7.0, 8.0]
    assert out.thresholds["hi"]["threshold_max"] == 6.0


def test_quantile_ties_share_one_fate() -> None:
    # n=6, drop_lowest 0.5 -> k=3; the 4th lowest is 1.0 (tied with the 2nd and 3rd): only 0.0 goes
    rows = _rows("m", [1.0, 0.0, 1.0, 1.0, 2.0, 3.0])
    out = apply_filters(rows, [FilterSpec("q", "m", drop_lowest=0.5)])
    assert out.kept == [True, False, True, True, True, True]
    # all equal: nothing can be singled out
    out = apply_filters(_rows("m", [0.0] * 5), [FilterSpec("q", "m", drop_lowest=0.4)])
    assert all(out.kept)
    # the cut drops ties below it: k=2 of [0,0,0,1] -> cut value 0 -> none below -> none dropped;
    # k=3 -> cut value 1 -> all three zeros dropped
    assert sum(not k for k in apply_filters(_rows("m", [0, 0, 0, 1]), [FilterSpec("q", "m", drop_lowest=0.5)]).kept) == 0
    assert sum(not k for k in apply_filters(_rows("m", [0, 0, 0, 1]), [FilterSpec("q", "m", drop_lowest=0.75)]).kept) == 3


def test_quantile_edges_and_missing_values() -> None:
    rows = _rows("m", [3.0, None, float("nan"), 1.0, 2.0])  # 3 valued clips
    out = apply_filters(rows, [FilterSpec("q", "m", drop_lowest=1.0)])
    assert out.kept == [False, True, True, False, False]  # every valued clip, never the unvalued
    out = apply_filters(rows, [FilterSpec("q", "m", drop_lowest=0.3)])  # floor(0.9) = 0
    assert all(out.kept)
    out = apply_filters(rows, [FilterSpec("q", "m", drop_lowest=0.34)])  # floor(1.02) = 1 -> drop 1.0
    assert out.kept == [True, True, True, False, True]


def test_quantiles_are_over_all_clips_and_order_only_names_dropped_by() -> None:
    rows = [{"a": float(i), "b": float(9 - i)} for i in range(10)]
    fa, fb = FilterSpec("a", "a", drop_lowest=0.2), FilterSpec("b", "b", drop_lowest=0.3)
    ab, ba = apply_filters(rows, [fa, fb]), apply_filters(rows, [fb, fa])
    assert ab.kept == ba.kept
    assert sum(not k for k in ab.kept) == 5  # 2 lowest a (0, 1) and 3 lowest b (a = 7, 8, 9)
    rows2 = [{"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 2.0}, {"a": 3.0, "b": 3.0}]
    ab = apply_filters(rows2, [FilterSpec("a", "a", drop_lowest=0.25), FilterSpec("b", "b", min=0.5)])
    assert ab.dropped_by[0] == "a" and ab.dropped_by_all[0] == "a,b"
    assert ab.counts["a"] == {"removed": 1, "removed_first": 1, "removed_alone": 0}
    assert ab.counts["b"] == {"removed": 1, "removed_first": 0, "removed_alone": 0}


def test_absent_column_is_skipped() -> None:
    rows = _rows("motion_score", [0.1, 0.2])
    out = apply_filters(rows, [FilterSpec("aesthetic", "aesthetic", min=4.5), FilterSpec("m", "motion_score", max=0.15)])
    assert out.skipped == {"aesthetic": "no clip has column 'aesthetic'"}
    assert "aesthetic" not in out.counts
    assert out.kept == [True, False]


def test_filter_specs_from_config_and_validation() -> None:
    specs = filter_specs({"motion": {"column": "motion_score", "drop_lowest": 0.25, "min": None},
                          "off": None, "text": {"column": "text_ratio", "max": 0.07}})
    assert [(s.name, s.column, s.drop_lowest, s.max) for s in specs] == [
        ("motion", "motion_score", 0.25, None), ("text", "text_ratio", None, 0.07)]
    with pytest.raises(ValueError, match="fraction"):
        FilterSpec("q", "m", drop_lowest=1.5)
    with pytest.raises(ValueError, match="sets none"):
        FilterSpec("q", "m")
    with pytest.raises(ValueError, match="unique"):
        apply_filters([], [FilterSpec("q", "m", max=1), FilterSpec("q", "n", max=1)])
