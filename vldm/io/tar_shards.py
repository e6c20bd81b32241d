"""Webdataset-style tar shards as files: where they are (paths, globs, brace patterns, URLs), how a
shard streams into samples (consecutive members sharing a key), and how a member is written."""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

MAKE_TOY_HINT = "make toy data with `python -m vldm.jobs.toy_data --root data/toy`"


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append ``data`` as member ``name`` with fixed metadata (mtime 0, root, 0644), so that a shard's
    bytes depend only on its samples."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _is_url(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def resolve_shards(spec: str | Path | list[str] | tuple[str, ...], hint: str = MAKE_TOY_HINT) -> list[str]:
    """Expand a directory (its ``*.tar``), glob, brace pattern or list into a list of shard paths.

    URLs (``s3://...``, ``pipe:...``) pass through unchanged. Raises ``FileNotFoundError`` ending
    in ``hint`` (how to make the shards) when a path is missing or nothing matches.
    """
    from braceexpand import braceexpand

    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__iter__") and not isinstance(spec, (str, Path))):
        items = [str(s) for s in spec]
        if not items:
            raise FileNotFoundError(f"empty list of shards given; {hint}")
        return [shard for item in items for shard in resolve_shards(item, hint)]
    spec = str(spec)
    shards: list[str] = []
    for item in braceexpand(spec):
        if _is_url(item):
            shards.append(item)
        elif os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(glob.escape(item), "*.tar")))
            if not found:
                raise FileNotFoundError(f"no *.tar shards in directory '{item}'; {hint}")
            shards += found
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"no shards match '{item}'; {hint}")
            shards += found
        elif os.path.isfile(item):
            shards.append(item)
        else:
            raise FileNotFoundError(f"shard path '{item}' does not exist (from '{spec}'); {hint}")
    return shards


def _open(shard: str) -> BinaryIO:
    if _is_url(shard):
        from webdataset.gopen import gopen

        return gopen(shard, "rb")
    return open(shard, "rb")


def iter_tar_samples(shard: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` groups from one tar shard, streaming."""
    current: dict[str, Any] | None = None
    with _open(shard) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            dirname, base = os.path.split(member.name)
            if base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = os.path.join(dirname, stem) if dirname else stem
            fileobj = tar.extractfile(member)
            data = fileobj.read() if fileobj is not None else b""
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": shard}
            current[ext.lower()] = data
    if current is not None:
        yield current
