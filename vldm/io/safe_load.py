"""Safe, strict checkpoint loading: safetensors or ``torch.load(weights_only=True)`` only.

A mismatch never passes silently: :func:`load_strict` names the missing, unexpected and
wrongly shaped keys. The writers here (:func:`save_safetensors`, :func:`write_weights`, and
:func:`weights_bytes` in memory) record the SHA-256 of the tensor data in the metadata
(:data:`CONTENT_HASH`); the readers (:func:`load_state_dict_file`, :func:`load_weights_bytes`,
:class:`~vldm.io.tensor_source.TensorSource` through :func:`verify_content_hash`) check it, so a
flipped bit is refused before it is trained on. Files without the entry (released weights) load
unchecked.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


CONTENT_HASH = "vldm_sha256"  # metadata key: hex SHA-256 of every byte after the header
HASH_CHUNK = 16 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def safetensors_metadata(path: str | Path) -> tuple[dict[str, str], int]:
    """A safetensors file's ``__metadata__`` and the byte where its tensor data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"cannot read checkpoint {path}: header too small")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (ValueError, MemoryError) as err:
            raise CheckpointError(f"cannot read checkpoint {path}: its header is not JSON ({err})") from err
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (meta or {}).items()}, 8 + size


def data_digest(path: str | Path, start: int) -> str:
    """Hex SHA-256 of the bytes of ``path`` from ``start`` to its end."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(recorded: str, found: str, what: str | Path) -> None:
    if found != recorded:
        raise CheckpointError(f"{what} is corrupt: its tensor data does not match the content hash vldm recorded "
                              f"when writing it ({CONTENT_HASH} {recorded[:12]}..., the data gives {found[:12]}...; "
                              f"a flipped bit or a damaged copy): copy the file again, or re-export it from its run")


def verify_content_hash(path: str | Path) -> bool:
    """Check a safetensors file's recorded :data:`CONTENT_HASH`; False when it records none.

    Raises :class:`CheckpointError` naming the file when the tensor data differs from the hash."""
    metadata, start = safetensors_metadata(path)
    recorded = metadata.get(CONTENT_HASH)
    if recorded is None:
        return False
    _check_digest(recorded, data_digest(path, start), path)
    return True


def weights_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """``state`` as the bytes of a safetensors file (e.g. a tar member), with its :data:`CONTENT_HASH`."""
    from vldm.io.safetensors_stream import header_bytes, tensor_bytes

    specs = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    data = b"".join(bytes(tensor_bytes(state[k], dtype)) for k, _, dtype in specs if state[k].numel())
    head, _ = header_bytes(specs, {**(metadata or {}), CONTENT_HASH: hashlib.sha256(data).hexdigest()})
    return head + data


def load_weights_bytes(data: bytes, what: str = "safetensors bytes") -> dict[str, torch.Tensor]:
    """The tensors of safetensors bytes (:func:`weights_bytes`), their :data:`CONTENT_HASH` checked when recorded."""
    from safetensors.torch import load

    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        recorded = (header.get("__metadata__") or {}).get(CONTENT_HASH)
    except (struct.error, ValueError, AttributeError) as err:
        raise CheckpointError(f"cannot read {what}: not safetensors ({err})") from err
    if recorded is not None:
        _check_digest(recorded, hashlib.sha256(data[8 + size:]).hexdigest(), what)
    return load(data)


def file_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty for other formats or unreadable files)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return {}
    try:
        return safetensors_metadata(path)[0]
    except (CheckpointError, OSError):
        return {}


def describe_file(path: str | Path) -> str:
    """What a weights file says it is, from its metadata (stage, format, source), or ``""``."""
    meta = file_metadata(path)
    parts = []
    if meta.get("stage"):
        parts.append(f"the weights of a vldm '{meta['stage']}' stage (metadata stage={meta['stage']}"
                     + (f", global_step={meta['global_step']}" if meta.get("global_step") else "") + ")")
    if meta.get("format") == "svd" and "vldm_version" in meta:
        parts.append(f"a vldm export in the SVD layout (of stage '{meta.get('source_stage', '?')}', "
                     f"model_channels={meta.get('model_channels', '?')})")
    return "; ".join(parts)


def load_state_dict_file(path: str | Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file (memory-mapped) or a ``.ckpt`` / ``.pt`` / ``.bin``
    file (``weights_only=True``; a Lightning checkpoint's ``state_dict`` is used).

    ``prefix``: keep only keys under it, with the prefix stripped.
    """
    path = Path(path)
    if not path.is_file():
        from vldm.io.identify import missing_file_message

        raise FileNotFoundError(missing_file_message(str(path)))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            verify_content_hash(path)
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state, Mapping) and "state_dict" in state:
                state = state["state_dict"]
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat mapping of tensors")
    if prefix is not None:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path} has no keys under {prefix!r}")
    return dict(state)


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def key_mismatch(own: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between two ``{key: shape}`` maps, as
    message parts (empty when they agree)."""
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    wrong = sorted(k for k in set(own) & set(found) if tuple(own[k]) != tuple(found[k]))
    parts = []
    if missing:
        parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        parts.append("shape mismatches: " + _listing([f"{k} {tuple(found[k])} vs model {tuple(own[k])}"
                                                       for k in wrong]))
    return parts


def check_keys(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``module``'s keys and shapes."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    parts = key_mismatch(own, {k: tuple(v.shape) for k, v in state.items()})
    if parts:
        raise CheckpointError(f"{what} does not match {type(module).__name__}: " + "; ".join(parts))


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Copy ``state`` into ``module`` after :func:`check_keys`; dtypes are cast to the module's."""
    check_keys(module, state, what)
    module.load_state_dict(dict(state), strict=True)


def write_weights(path: str | Path, specs: Sequence[tuple[str, Sequence[int], torch.dtype]],
                  produce: Callable[[str], torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Stream tensors to a safetensors file atomically, one at a time, with its :data:`CONTENT_HASH`."""
    from vldm.io.safetensors_stream import write_safetensors

    return write_safetensors(path, specs, produce, metadata, digest_key=CONTENT_HASH)


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (shared storage written once per name) to ``path`` atomically, with its :data:`CONTENT_HASH`."""
    specs = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    return write_weights(path, specs, lambda key: state[key], metadata)
