"""Write a safetensors file one tensor at a time.

``safetensors.torch.save_file`` needs every tensor in memory at once; exporting a 1.5 B-parameter
model as fp16 that way holds the fp16 copy of everything. This writer takes the key list, shapes
and dtype first (the header), then asks for each tensor in turn, so the peak is one tensor. The
file format (Hugging Face safetensors): an 8-byte little-endian header length, a JSON header
``{key: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`` padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes in header order.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}

DIGEST_PLACEHOLDER = "0" * 64  # a SHA-256 hex digest's length: the header keeps its size when it is filled in


def header_bytes(specs: Sequence[tuple[str, Sequence[int], torch.dtype]],
                 metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The file's first bytes (length + padded JSON header) and each key's ``(start, end)`` in the data."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets: dict[str, tuple[int, int]] = {}
    offset = 0
    for key, shape, dtype in specs:
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"{key}: dtype {dtype} cannot be written to safetensors")
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": [int(s) for s in shape],
                       "data_offsets": [offset, offset + size]}
        offsets[key] = (offset, offset + size)
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, offsets


def tensor_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> memoryview:
    """The raw little-endian bytes of ``tensor`` cast to ``dtype`` (CPU, contiguous)."""
    data = tensor.detach().to("cpu", dtype).contiguous().reshape(-1)
    return memoryview(data.view(torch.uint8).numpy())


def write_safetensors(path: str | Path, specs: Sequence[tuple[str, Sequence[int], torch.dtype]],
                      produce: Callable[[str], torch.Tensor], metadata: Mapping[str, str] | None = None,
                      digest_key: str | None = None) -> Path:
    """Write ``specs`` (key, shape, dtype) to ``path``; ``produce(key)`` gives each tensor when needed.

    Each produced tensor is cast to its spec's dtype and must have its spec's shape. The file is
    written to ``path.tmp`` and renamed when complete, so a crash never leaves a truncated file.
    ``digest_key``: a metadata key that receives the hex SHA-256 of the tensor data (every byte
    after the header), filled in once the data is written.
    """
    path = Path(path)
    metadata = dict(metadata or {})
    if digest_key is not None:
        metadata[digest_key] = DIGEST_PLACEHOLDER
    head, _ = header_bytes(specs, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        f.write(head)
        for key, shape, dtype in specs:
            tensor = produce(key)
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{key}: produced shape {tuple(tensor.shape)}, header says {tuple(shape)}")
            if tensor.numel():
                data = tensor_bytes(tensor, dtype)
                digest.update(data)
                f.write(data)
            del tensor
        if digest_key is not None:
            f.seek(_placeholder_offset(head, digest_key))
            f.write(digest.hexdigest().encode())
    tmp.replace(path)
    return path


def _placeholder_offset(head: bytes, digest_key: str) -> int:
    """Where the digest's placeholder value starts in the header bytes."""
    marker = json.dumps({digest_key: DIGEST_PLACEHOLDER}, separators=(",", ":"))[1:-1].encode()
    at = head.find(marker)
    if at < 0 or head.find(marker, at + 1) >= 0:
        raise ValueError(f"cannot place the {digest_key} digest in the header")
    return at + len(marker) - len(DIGEST_PLACEHOLDER) - 1
