"""Load a released checkpoint (SVD family, SD 2.1) or any SGM-layout file into a model, lean and strict.

The model is built as a skeleton (:func:`~vldm.checkpoints.meta_init.build_on_meta`), the
file is read one tensor at a time (:class:`~vldm.io.tensor_source.TensorSource`), each
tensor is cast to the asked dtype and placed on the asked device as it is read, and the module
takes the tensors by ``load_state_dict(strict=True, assign=True)``. With fp16 asked for, no full
fp32 copy of the model ever exists on the host: the peak is the fp16 model plus one fp32 tensor
(measured: 0.61 GB peak RSS for a 1.07 GB fp32 file, against 1.65 GB loading it whole then casting).

Strict: before reading any tensor, the file's key set and shapes must equal the model's (after the
layout's renaming). A mismatch raises :class:`CheckpointError` naming the keys, and says which known
model the file holds and which config loads it (:func:`vldm.io.identify.identify`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vldm.io.identify import identify, missing_file_message
from vldm.checkpoints.ldm_layout import EMA_SCALARS, SCHEDULE_BUFFERS, split_ldm_keys, to_ldm_key, verify_schedule
from vldm.checkpoints.meta_init import build_on_meta, materialize_buffers, meta_tensors, move_buffers
from vldm.io.safe_load import CheckpointError, key_mismatch
from vldm.io.tensor_source import TensorSource

log = logging.getLogger(__name__)

LAYOUTS = ("sgm", "ldm")


class ModelMismatch(CheckpointError):
    """The file's keys or shapes are not the model's: it holds another model."""


@dataclass(frozen=True)
class Companion:
    """A separate weights file that must agree with part of a loaded checkpoint.

    Attached to a submodule as ``companion_weights`` (e.g. SD 2.1's text tower and the OpenCLIP
    ViT-H-14 file): the submodule's key ``prefix + k`` corresponds to the file's key ``k``.
    """

    path: str
    prefix: str = ""


def load_pretrained(build: Callable[[], nn.Module], path: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu", layout: str = "sgm",
                    keep_fp32: Sequence[str] = ()) -> nn.Module:
    """``build()``'s module filled strictly from the checkpoint at ``path``.

    ``dtype``: floating-point parameters are cast to it (None: the dtype the module was built with);
    buffers keep the dtype they were built with (a latent scale factor stays fp32);
    ``keep_fp32``: module prefixes kept in float32 whatever ``dtype`` says (e.g. ``first_stage_model``);
    ``layout``: ``sgm`` (names as the model's, e.g. the SVD files) or ``ldm`` (SD 2.x files of
    Stability-AI/stablediffusion, see :mod:`vldm.checkpoints.ldm_layout`).
    Buffers the file does not hold (computed ones) are recomputed on ``device`` in their own dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(str(path)))
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    device = torch.device(device)
    module = build_on_meta(build)
    own = module.state_dict(keep_vars=True)
    with TensorSource(path) as source:
        file_shapes = source.shapes()
        names, schedule = _names(list(file_shapes), layout)
        found = {own_key: file_shapes[file_key] for own_key, file_key in names.items()}
        parts = key_mismatch({k: tuple(v.shape) for k, v in own.items()}, found)
        if parts:
            raise ModelMismatch(_mismatch_message(path, layout, parts, file_shapes, source.metadata, own))
        if schedule:
            verify_schedule({k: source.get(k) for k in schedule}, _reference_sigmas(module), str(path))
        log.info("loading %s (%d tensors) as %s on %s", path, len(names), dtype or "built dtype", device)
        state = _read(source, names, own, dtype, device, tuple(keep_fp32))
    module.load_state_dict(state, strict=True, assign=True)
    del state
    move_buffers(module, device)
    materialize_buffers(module, device)
    left = meta_tensors(module)
    if left:
        raise CheckpointError(f"after loading {path}, these tensors are still on the meta device (made by the "
                              f"model but neither saved in its state dict nor recomputed by an init_buffers): {', '.join(left[:12])}")
    check_companions(module)
    return module


def _names(file_keys: list[str], layout: str) -> tuple[dict[str, str], list[str]]:
    """(``{model key: file key}``, schedule buffers to verify) for a layout."""
    if layout == "ldm":
        return split_ldm_keys(file_keys)
    return {k: k for k in file_keys}, []


def _reference_sigmas(module: nn.Module) -> torch.Tensor:
    """The DDPM sigmas of the module's discrete denoiser (SD's default ladder when it has none)."""
    from vldm.diffusion.discretization import ddpm_sigmas

    schedule = getattr(getattr(module, "denoiser", None), "schedule", ())
    return ddpm_sigmas(*schedule)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p.rstrip(".") or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def _read(source: TensorSource, names: dict[str, str], own: dict[str, torch.Tensor], dtype: torch.dtype | None,
          device: torch.device, keep_fp32: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The model's state, read tensor by tensor; a tensor shared under several names (one module
    reachable by two paths) is read once, and the file's copies must be equal."""
    aliases: dict[int, list[str]] = {}
    for key, tensor in own.items():
        aliases.setdefault(id(tensor), []).append(key)
    state: dict[str, torch.Tensor] = {}
    for keys in aliases.values():
        reference = own[keys[0]]
        if not reference.is_floating_point() or not isinstance(reference, nn.Parameter):
            target = reference.dtype  # buffers (a latent scale, a statistic) keep the dtype they were built in
        elif any(_under(k, keep_fp32) for k in keys):
            target = torch.float32
        else:
            target = dtype or reference.dtype
        raw = source.get(names[keys[0]])
        for other in keys[1:]:
            if not torch.equal(source.get(names[other]), raw):
                raise CheckpointError(f"{source.path}: the model shares one module under {keys[0]!r} and "
                                      f"{other!r}, but the file holds different values for them (build them as "
                                      f"separate modules)")
        tensor = raw.to(device=device, dtype=target)
        del raw
        for key in keys:
            state[key] = tensor
    return state


def _mismatch_message(path: Path, layout: str, parts: list[str], file_shapes: dict, metadata: dict,
                      own: dict[str, torch.Tensor]) -> str:
    file_id = identify(file_shapes, metadata)
    own_shapes = {k: tuple(v.shape) for k, v in own.items()}
    model_id = identify(own_shapes) if layout == "sgm" else identify({to_ldm_key(k): s for k, s in own_shapes.items()})
    lines = [f"{path} does not fit the model being loaded ({layout} layout): " + "; ".join(parts) + "."]
    lines.append(f"The file looks like {file_id}." if file_id else "The file is not a model vldm recognises.")
    if model_id:
        lines.append(f"The model config being loaded is {model_id.description}.")
    ema = [k for k in file_shapes if k.startswith("model_ema.") and k not in EMA_SCALARS]
    if ema:
        lines.append(f"The file also holds an EMA copy ({len(ema)} model_ema.* tensors): use the EMA-pruned "
                     f"release (e.g. v2-1_768-ema-pruned) instead of the full training checkpoint.")
    if layout == "sgm" and any(k in file_shapes for k in SCHEDULE_BUFFERS):
        lines.append("It carries LDM DDPM schedule buffers: it is in the LDM layout (checkpoint_layout: ldm).")
    return " ".join(lines)


def check_companions(module: nn.Module) -> None:
    """Every submodule with a ``companion_weights`` (:class:`Companion`) must agree with that file.

    Compared in the lower precision of the two (a fp16 release against an fp32 original: equal up
    to rounding, relative 1e-3 / absolute 1e-5)."""
    for name, sub in module.named_modules():
        companion = getattr(sub, "companion_weights", None)
        if companion is None:
            continue
        with TensorSource(companion.path) as source:
            available = set(source.keys())
            differ, absent = [], []
            for key, value in sub.state_dict().items():
                if not key.startswith(companion.prefix):
                    continue
                file_key = key[len(companion.prefix):]
                if file_key not in available:
                    absent.append(file_key)
                    continue
                other = source.get(file_key)
                low = value.dtype if value.element_size() <= other.element_size() else other.dtype
                a, b = value.detach().to("cpu", low).float(), other.to(low).float()
                if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-5):
                    differ.append(file_key)
        if absent or differ:
            raise CheckpointError(
                f"{companion.path} disagrees with the checkpoint's {name or 'model'} weights "
                f"({'missing: ' + ', '.join(absent[:6]) + '; ' if absent else ''}"
                f"{'different: ' + ', '.join(differ[:6]) if differ else ''}): the two files are not the same "
                f"model; the checkpoint's weights take precedence, so drop the separate file (or give the "
                f"right one)")
        log.info("%s agrees with the checkpoint's %s", companion.path, name)
