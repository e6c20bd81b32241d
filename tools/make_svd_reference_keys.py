"""Write the reference state-dict layout (sorted ``[key, shape]``) of the released SVD files.

Run by hand, not in CI. It needs the ``sgm`` source tree of Stability-AI/generative-models
(the reference implementation, not a dependency of vldm), e.g.::

    git -C <generative-models clone> archive HEAD sgm configs | tar -x -C /tmp/sgmref
    python tools/make_svd_reference_keys.py --sgm-root /tmp/sgmref --out-dir tests/data

It builds ``sgm.models.diffusion.DiffusionEngine`` from the reference's own
``configs/inference/svd.yaml`` (temporal decoder: svd, svd_xt, svd_xt_1_1) and
``configs/inference/svd_image_decoder.yaml`` (image decoder: the ``*_image_decoder`` files) on
the ``meta`` device — no weights are read or downloaded — and dumps ``state_dict()`` keys and
shapes. SVD and SVD-XT share one architecture (they differ only in weights and sampling
presets), so one list serves both. vldm's own classes are not imported: the list is an
independent reference for ``tests/test_svd_layout.py``.

Third-party packages that ``sgm`` imports but that play no part in building the network
(kornia, imwatermark, torchdata, matplotlib, ...) are replaced by empty stand-in modules when
they are not installed.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

STUBBED = ("kornia", "imwatermark", "torchdata", "matplotlib", "fire", "natsort", "rembg")
CONFIGS = {
    "svd_xt_reference_keys.json.gz": "configs/inference/svd.yaml",
    "svd_xt_image_decoder_reference_keys.json.gz": "configs/inference/svd_image_decoder.yaml",
}


class _StubModule(types.ModuleType):
    """A module whose every attribute is another stub (enough for import-time ``from x import y``)."""

    def __getattr__(self, name: str) -> types.ModuleType:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubModule(f"{self.__name__}.{name}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Supplies stand-ins for the names in ``STUBBED`` (and their submodules) that are not installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = tuple(n for n in names if importlib.util.find_spec(n) is None)

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        return None


def reference_layout(sgm_root: Path, config_path: str) -> list[list]:
    """Sorted ``[key, shape]`` of ``DiffusionEngine(config).state_dict()``, built on ``meta``."""
    import torch
    from omegaconf import OmegaConf

    from sgm.util import instantiate_from_config  # noqa: PLC0415 - from the reference tree

    cfg = OmegaConf.load(sgm_root / config_path)
    for emb in cfg.model.params.conditioner_config.params.emb_models:
        clip_cfg = emb.get("params", {}).get("open_clip_embedding_config")
        if clip_cfg is not None:  # architecture only: no pretrained tag (no download), built on meta
            clip_cfg.params.version = None
            clip_cfg.params.init_device = "meta"
    cfg.model.params.pop("ckpt_path", None)
    with torch.device("meta"):
        engine = instantiate_from_config(cfg.model)
    return sorted([k, list(v.shape)] for k, v in engine.state_dict().items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sgm-root", type=Path, required=True, help="folder holding sgm/ and configs/")
    parser.add_argument("--out-dir", type=Path, default=Path("tests/data"))
    args = parser.parse_args()
    if not (args.sgm_root / "sgm").is_dir():
        raise SystemExit(f"{args.sgm_root} has no sgm/ package (extract the generative-models tree there)")
    import open_clip  # noqa: F401, PLC0415 - import real dependencies before the stand-ins exist,
    import pytorch_lightning  # noqa: F401, PLC0415 - so their optional-package probes see the truth
    import transformers  # noqa: F401, PLC0415

    sys.meta_path.insert(0, _StubFinder(STUBBED))
    sys.path.insert(0, str(args.sgm_root.resolve()))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, config_path in CONFIGS.items():
        layout = reference_layout(args.sgm_root, config_path)
        out = args.out_dir / name
        with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(json.dumps(layout, indent=0).encode())
        total = sum(int(__import__("math").prod(s)) for _, s in layout)
        print(f"{out}: {len(layout)} tensors, {total:,} values (from {config_path})")


if __name__ == "__main__":
    main()
