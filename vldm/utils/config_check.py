"""Checks on a composed Hydra config that need no torch, so a mistyped key is reported in a second.

Hydra refuses ``stage.max_stepz=3`` (the key is not in the config) and suggests ``+stage.max_stepz=3``,
which it then accepts. A key appended with ``+`` is read by nothing unless the node it lands in is
instantiated (a ``_target_`` node checks its arguments) or is the Hydra node; anywhere else it would
be silently ignored, so :func:`refuse_appended_keys` refuses it and names the keys that node has.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config mistake found before anything was built."""


def _appended_keys(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of ``+key=value`` overrides (``++`` forces a value, it appends nothing new)."""
    keys = []
    for text in overrides:
        if text.startswith("+") and not text.startswith("++") and "=" in text:
            key = text[1:].split("=", 1)[0]
            if "@" not in key and not key.startswith("hydra."):
                keys.append(key)
    return keys


def refuse_appended_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for a ``+a.b=v`` whose parent node ``a`` has no ``_target_``."""
    problems = []
    for key in _appended_keys(overrides):
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue  # a config group (``+experiment=x``) or a key that lives elsewhere
        if "_target_" in parent:
            continue  # instantiation refuses arguments the target does not take
        known = [k for k in parent.keys() if k != leaf]
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {parent_key + '.' if parent_key else ''}{close[0]}? " if close else ""
        problems.append(f"+{key}: nothing reads {leaf!r} in {parent_key or 'the top level'}; {hint}"
                        f"its keys are {', '.join(sorted(map(str, known)))}")
    if problems:
        raise ConfigError("unknown config key(s):\n  " + "\n  ".join(problems))
