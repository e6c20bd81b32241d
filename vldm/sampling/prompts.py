"""The prompts of a text-to-video or text-to-image run: ``prompt=`` (one or a list) or ``prompts=FILE``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def prompts_from_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and ``#`` lines skipped; a file without any is refused."""
    if not path.exists():
        raise FileNotFoundError(f"prompts file {path} does not exist (prompts=FILE: one prompt per line, "
                                f"blank and '#' lines skipped)")
    if not path.is_file():
        raise ValueError(f"prompts={path} is not a file: give a text file of one prompt per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt (only blank or '#' lines): write one prompt per line")
    return prompts


def read_prompts(prompt: Any, prompts: Any) -> list[str]:
    """The prompts asked for (``[]``: none); refuses both ``prompt`` and ``prompts``, and an empty list."""
    if prompt is not None and prompts is not None:
        raise ValueError(f"both prompt=... and prompts={prompts} were given: give one (prompt=\"...\" or a list, "
                         f"or prompts=FILE of one prompt per line)")
    if prompts is not None:
        return prompts_from_file(Path(str(prompts)))
    if prompt is None:
        return []
    listed = [str(prompt)] if isinstance(prompt, (str, int, float)) else [str(p) for p in prompt]
    if not listed:
        raise ValueError("prompt=[] holds no prompt: give prompt=\"...\", a list of prompts, or prompts=FILE")
    return listed


def prompt_slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt (``a_red_square``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:limit] or "prompt"
