"""The curation config: ``configs/curate.yaml`` on top of the sections its dataclasses define.

``prefilter``, ``cuts`` and ``shards`` take their keys, types and defaults from
:class:`~data_curation.probe.PrefilterConfig`, :class:`~data_curation.cuts.CutDetectorConfig` and
:class:`~data_curation.shard_writer.OutputConfig`, so the yaml repeats none of them. :func:`register`
stores those sections in Hydra's ConfigStore as ``curate_dataclasses``, the first entry of the yaml's
defaults list; the yaml and the command line then change only what they name, and a key a dataclass
does not have (``cuts.cut_treshold=0.5``) is refused while the config is composed, and one added
with ``+`` (which Hydra lets through) by :func:`check_sections` before a run starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from data_curation.cuts import CutDetectorConfig
from data_curation.probe import PrefilterConfig
from data_curation.shard_writer import OutputConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
SCHEMA_NAME = "curate_dataclasses"
# section name -> (dataclass, whether the section names it as ``_target_`` for hydra's instantiate)
SECTIONS: dict[str, tuple[type, bool]] = {
    "prefilter": (PrefilterConfig, True),
    "cuts": (CutDetectorConfig, True),
    "shards": (OutputConfig, False),
}


def section(cls: type, target: bool) -> DictConfig:
    """``cls``'s fields, types and defaults as a closed, writable node (plus ``_target_: cls`` if ``target``)."""
    node = OmegaConf.structured(cls)
    OmegaConf.set_readonly(node, False)  # a frozen dataclass gives a read-only node; overrides must apply
    if target:
        with open_dict(node):
            node["_target_"] = f"{cls.__module__}.{cls.__qualname__}"
    return node


def register() -> None:
    """Store the dataclass sections in Hydra's ConfigStore as ``curate_dataclasses`` (before composing)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node={name: section(cls, target)
                                                         for name, (cls, target) in SECTIONS.items()})


def check_sections(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming any key of a dataclass section (of a plain config) its dataclass lacks."""
    for name, (cls, target) in SECTIONS.items():
        node = cfg.get(name)
        if not isinstance(node, Mapping):
            continue
        known = [f.name for f in dataclasses.fields(cls)] + (["_target_"] if target else [])
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise ValueError(f"unknown {name} keys {unknown}: {cls.__name__} ({cls.__module__}) has {known}")


def compose_curate(overrides: list[str]) -> Any:
    """``configs/curate.yaml`` composed with ``overrides`` outside ``python -m data_curation`` (tests, bench)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("curate", overrides=overrides)
