"""Clip filters: absolute thresholds and quantile cuts over the scores of every clip.

SVD (Blattmann et al. 2023, Sec. 3.1 and App. E) filters its curated set with absolute thresholds
(e.g. OCR text area) and with quantile cuts (e.g. "remove the most static 25 %"); a filter here is
``{column, min, max, drop_lowest, drop_highest}``:

* ``min`` / ``max``: drop clips whose value is ``< min`` or ``> max`` (booleans count as 0 / 1,
  so ``{column: static, max: 0}`` drops the clips flagged static);
* ``drop_lowest`` / ``drop_highest``: fractions 0-1; drop that fraction of the clips with the
  lowest / highest values. Quantiles are taken over the clips that have the column (null and
  NaN values are "no value": such a clip is neither counted nor removed by this filter).

Ties: with ``n`` valued clips and ``k = floor(fraction * n)``, the cut value is the ``(k+1)``-th
lowest value (``drop_lowest``) and clips strictly below it are dropped — so clips with equal values
always share one fate, and a tie at the cut keeps all of them (a cut may drop fewer than ``k``,
never more). ``fraction = 1`` drops every valued clip. ``drop_highest`` mirrors this.

Small inputs: a quantile of a handful of values says nothing about the data (on 4 good clips,
``drop_lowest: 0.25`` would always drop one of them). With ``min_clips`` set, a filter's quantile
cuts apply only when at least ``min_clips`` clips have the column; below that they drop nothing
(``min`` / ``max`` still apply), and a filter left with nothing else to do is skipped, saying why.

Every filter is evaluated on all clips independently (a quantile does not depend on what the
other filters removed), so the outcome does not depend on the order; the config order only
decides ``dropped_by`` (the first filter in order that removes the clip). ``dropped_by_all`` lists
every filter that would. A filter whose column no clip has (its scorer unavailable) is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

DROP_SEPARATOR = ","


@dataclass(frozen=True)
class FilterSpec:
    """One filter of the config (see the module docstring for the semantics)."""

    name: str
    column: str
    min: float | None = None
    max: float | None = None
    drop_lowest: float | None = None
    drop_highest: float | None = None
    min_clips: int = 0

    def __post_init__(self) -> None:
        if int(self.min_clips) < 0:
            raise ValueError(f"filter {self.name!r}: min_clips must be >= 0, got {self.min_clips}")
        if DROP_SEPARATOR in self.name or not self.name:
            raise ValueError(f"filter name must be non-empty without {DROP_SEPARATOR!r}, got {self.name!r}")
        for key in ("drop_lowest", "drop_highest"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"filter {self.name!r}: {key} must be a fraction in [0, 1], got {value}")
        if self.min is not None and self.max is not None and float(self.min) > float(self.max):
            raise ValueError(f"filter {self.name!r}: min {self.min} > max {self.max}")
        if all(getattr(self, k) is None for k in ("min", "max", "drop_lowest", "drop_highest")):
            raise ValueError(f"filter {self.name!r} sets none of min, max, drop_lowest, drop_highest")


def filter_specs(config: Mapping[str, Any] | None) -> list[FilterSpec]:
    """Filters from the config mapping ``{name: {column, min, ...}}`` in order; null entries are off."""
    specs = []
    for name, spec in (config or {}).items():
        if spec is None:
            continue
        spec = dict(spec)
        specs.append(FilterSpec(name=str(name), column=str(spec.pop("column", name)), **spec))
    return specs


def _value(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or isinstance(value, str):
        return None
    value = float(value)  # bool -> 0.0 / 1.0
    return None if math.isnan(value) else value


def quantile_cut(values: list[float], fraction: float, lowest: bool) -> float | None:
    """The cut value of a quantile filter (see the module docstring), or None to drop nothing."""
    n = len(values)
    k = int(math.floor(fraction * n + 1e-9))
    if k <= 0:
        return None
    if k >= n:
        return math.inf if lowest else -math.inf
    ordered = sorted(values)
    return ordered[k] if lowest else ordered[n - 1 - k]


def quantiles_apply(spec: FilterSpec, num_valued: int) -> bool:
    """Whether ``spec``'s quantile cuts apply to ``num_valued`` clips having its column (``min_clips``)."""
    return num_valued >= int(spec.min_clips)


def _removes(spec: FilterSpec, rows: list[Mapping[str, Any]]) -> tuple[list[bool], dict[str, float | None]]:
    """Which rows ``spec`` removes, and its resolved bounds (a quantile cut, else ``min``/``max``)."""
    values = [_value(row, spec.column) for row in rows]
    present = [v for v in values if v is not None]
    quantiles = quantiles_apply(spec, len(present))
    low = quantile_cut(present, float(spec.drop_lowest), True) if spec.drop_lowest and quantiles else None
    high = quantile_cut(present, float(spec.drop_highest), False) if spec.drop_highest and quantiles else None
    bounds = {
        "threshold_min": low if low is not None and math.isfinite(low) else spec.min,
        "threshold_max": high if high is not None and math.isfinite(high) else spec.max,
    }
    out = []
    for v in values:
        out.append(
            v is not None
            and (
                (spec.min is not None and v < float(spec.min))
                or (spec.max is not None and v > float(spec.max))
                or (low is not None and v < low)
                or (high is not None and v > high)
            )
        )
    return out, bounds


@dataclass
class FilterOutcome:
    """Decisions for each row (same order as the input) and counts per filter.

    ``counts[name]``: ``removed`` (clips this filter would remove), ``removed_first`` (clips whose
    ``dropped_by`` is this filter), ``removed_alone`` (clips no other filter would remove).
    """

    kept: list[bool]
    dropped_by: list[str | None]
    dropped_by_all: list[str | None]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float | None]] = field(default_factory=dict)


def apply_filters(rows: Iterable[Mapping[str, Any]], specs: list[FilterSpec]) -> FilterOutcome:
    """Evaluate ``specs`` on clip ``rows`` (dicts of scores); see the module docstring."""
    rows = list(rows)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")
    active: list[tuple[FilterSpec, list[bool]]] = []
    skipped: dict[str, str] = {}
    thresholds: dict[str, dict[str, float | None]] = {}
    for spec in specs:
        valued = sum(_value(row, spec.column) is not None for row in rows)
        if not valued:
            skipped[spec.name] = f"no clip has column {spec.column!r}"
            continue
        if spec.min is None and spec.max is None and not quantiles_apply(spec, valued):
            skipped[spec.name] = (f"only {valued} clip(s) have column {spec.column!r}, fewer than its "
                                  f"min_clips {spec.min_clips}: a quantile cut of so few drops nothing")
            continue
        removes, thresholds[spec.name] = _removes(spec, rows)
        active.append((spec, removes))
    by_all = [[spec.name for spec, removes in active if removes[i]] for i in range(len(rows))]
    counts = {spec.name: {"removed": sum(removes), "removed_first": 0, "removed_alone": 0} for spec, removes in active}
    for names_i in by_all:
        if names_i:
            counts[names_i[0]]["removed_first"] += 1
        if len(names_i) == 1:
            counts[names_i[0]]["removed_alone"] += 1
    return FilterOutcome(
        kept=[not n for n in by_all],
        dropped_by=[n[0] if n else None for n in by_all],
        dropped_by_all=[DROP_SEPARATOR.join(n) if n else None for n in by_all],
        counts=counts,
        skipped=skipped,
        thresholds=thresholds,
    )
