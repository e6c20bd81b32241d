"""The run manifest: one parquet row per input (``row_type`` "video") and per clip ("clip").

Columns: :data:`~data_curation.records.MANIFEST_COLUMNS`, then the probe columns
(:meth:`~data_curation.records.VideoInfo.as_row`), then every scorer column, sorted by name. Rows
are sorted by ``(video_id, video row first, clip_index)``, so the file depends only on the inputs
and the config — not on the engine, the number of workers or how often the run was resumed. Column
types come from the values (all bool -> bool, all int -> int64, numbers -> float64, else string);
an all-null column is stored as a null column. Written to ``manifest.parquet.tmp``, then renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from data_curation.records import MANIFEST_COLUMNS

PROBE_COLUMNS: tuple[str, ...] = (
    "duration_s", "fps", "num_frames", "width", "height", "codec", "bits_per_pixel", "size_bytes",
)
_ROW_ORDER = {"video": 0, "clip": 1}


def sort_key(row: dict[str, Any]) -> tuple[str, int, int]:
    index = row.get("clip_index")
    return (str(row["video_id"]), _ROW_ORDER.get(row["row_type"], 2), -1 if index is None else int(index))


def column_order(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Fixed columns first, then probe columns, then the other (scorer) columns by name."""
    seen: set[str] = set()
    for row in rows:
        seen.update(row)
    fixed = list(MANIFEST_COLUMNS) + [c for c in PROBE_COLUMNS if c not in MANIFEST_COLUMNS]
    return fixed + sorted(seen - set(fixed))


def _arrow_type(values: list[Any]) -> Any:
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if not present:
        return pa.null()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _cell(value: Any, arrow_type: Any) -> Any:
    import pyarrow as pa

    if value is None:
        return None
    if arrow_type == pa.float64():
        return float(value)
    if arrow_type == pa.string() and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    return value


def to_table(rows: list[dict[str, Any]]) -> Any:
    """A ``pyarrow.Table`` of ``rows`` sorted and typed as the module docstring says."""
    import pyarrow as pa

    rows = sorted(rows, key=sort_key)
    columns = column_order(rows)
    arrays, fields = [], []
    for name in columns:
        values = [row.get(name) for row in rows]
        arrow_type = _arrow_type(values)
        arrays.append(pa.array([_cell(v, arrow_type) for v in values], type=arrow_type))
        fields.append(pa.field(name, arrow_type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_manifest(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` (parquet) atomically; returns the path."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(to_table(rows), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a manifest as dicts (column -> value, None for null)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
