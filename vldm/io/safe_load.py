"""Safe, strict checkpoint loading: safetensors or ``torch.load(weights_only=True)`` only.

A mismatch never passes silently: :func:`load_strict` names the missing, unexpected and
wrongly shaped keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


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

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state, Mapping) and "state_dict" in state:
                state = state["state_dict"]
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


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (made contiguous, shared storage broken) to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path
