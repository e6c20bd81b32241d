"""``input=`` an input list (txt, csv, parquet; Open-Sora / video2dataset style) instead of a folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from data_curation.config import compose_curate
from data_curation.manifest import read_manifest
from data_curation.pipeline import curate, list_inputs
from data_curation.synthetic import write_raw_toy_videos


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    write_raw_toy_videos(root, count=3, seed=5, bad_files=False)
    return root


def _videos(raw: Path) -> list[Path]:
    return sorted(p for p in raw.iterdir() if p.suffix == ".mp4")


def test_a_csv_list_with_captions_curates_end_to_end(raw: Path, tmp_path: Path) -> None:
    first, second, _ = _videos(raw)
    listing = tmp_path / "clips.csv"
    with listing.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "caption"])
        writer.writerow([f"raw/{first.name}", "a red square drifts left"])
        writer.writerow([str(second), ""])  # absolute, no caption: the sidecar (if any) or none
        writer.writerow(["raw/gone.mp4", "never recorded"])
    result = curate(compose_curate([f"input={listing}", f"output={tmp_path / 'out'}", "progress=false",
                                    "report=false"]), notify=lambda line: None)
    assert result.summary["inputs"] == 3 and result.summary["errors"] == {"missing": 1}
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    videos = {r["source"]: r for r in rows if r.get("clip_id") is None}
    assert set(videos) == {f"raw/{first.name}", second.as_posix(), "raw/gone.mp4"}
    clips = [r for r in rows if r.get("clip_id") is not None and r["source"] == f"raw/{first.name}"]
    assert clips and all(r["caption"] == "a red square drifts left" for r in clips)


def test_txt_and_parquet_lists_and_their_mistakes(raw: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"raw/{p.name}" for p in _videos(raw)]
    txt = tmp_path / "list.txt"
    txt.write_text("# three clips\n" + "\n".join(names) + "\n\n")
    inputs, ignored = list_inputs(txt)
    assert [i.source for i in inputs] == sorted(names) and ignored == []
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": names[:2], "caption": ["one", None]}), table)
    inputs, _ = list_inputs(table, extensions=["mp4"])
    sidecar = {f"raw/{i.source}": i.caption for i in list_inputs(raw)[0]}[names[1]]
    assert sidecar and [(i.source, i.caption) for i in inputs] == [(names[0], "one"), (names[1], sidecar)]
    txt.write_text(f"{names[0]}\n{names[0]}\n")
    with pytest.raises(ValueError, match="twice"):
        list_inputs(txt)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\nx.mp4,y\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        list_inputs(bad)
    with pytest.raises(FileNotFoundError, match="input list .*missing.csv' does not exist"):
        list_inputs(tmp_path / "missing.csv")
