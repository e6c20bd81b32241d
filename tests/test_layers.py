"""The import graph of vldm/ and data_curation/, read from the source: the layer order of
docs/architecture.md holds and no two files import each other, directly or in a cycle."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Lowest first. A file may import files of its own package and of packages in lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vldm", "vldm.io", "vldm.video", "vldm.utils"),
    ("vldm.nn", "vldm.diffusion"),
    ("vldm.conditioning",),
    ("vldm.models", "vldm.adapters"),
    ("vldm.checkpoints",),
    ("vldm.data",),
    ("vldm.sampling",),
    ("vldm.evaluation", "vldm.training", "data_curation"),
    ("vldm.jobs", "vldm.testing"),
)
#: Packages allowed to import Lightning: everything else runs without it.
LIGHTNING_USERS = ("vldm.training", "vldm.jobs")


def module_files(root: Path, packages: tuple[str, ...] = ("vldm", "data_curation")) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the top-level ``packages``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports anywhere in its source (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def external_imports_of(path: Path) -> set[str]:
    """Top-level names of every module the file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, package) of a module: its longest package prefix named in :data:`LAYERS`
    (``vldm`` itself names only the package's ``__init__``)."""
    best = (-1, "")
    for index, packages in enumerate(LAYERS):
        for package in packages:
            inside = name == package or (package != "vldm" and name.startswith(package + "."))
            if inside and len(package) > len(best[1]):
                best = (index, package)
    if best[0] < 0:
        raise ValueError(f"{name} is in no layer: add its package to LAYERS and docs/architecture.md")
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a module into a higher layer or into another package of its own layer."""
    found = []
    for name, targets in sorted(graph.items()):
        own, package = layer_of(name)
        for target in sorted(targets):
            other, other_package = layer_of(target)
            if other > own or (other == own and other_package != package and other_package != "vldm"):
                found.append(f"{name} imports {target} ({package} is layer {own}, {other_package} layer {other})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def import_graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_the_layer_order_holds_and_no_files_import_each_other() -> None:
    graph = import_graph(REPO)
    assert len(graph) > 100 and any(graph.values())
    assert layer_violations(graph) == []
    assert cycles(graph) == []


def test_lightning_is_imported_only_by_training_and_jobs() -> None:
    users = sorted(name for name, path in module_files(REPO).items()
                   if external_imports_of(path) & {"pytorch_lightning", "lightning", "lightning_fabric"}
                   and layer_of(name)[1] not in LIGHTNING_USERS)
    assert users == []


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_an_upward_import_and_a_cycle_are_caught(tmp_path: Path) -> None:
    make_tree(tmp_path, {
        "vldm/__init__.py": "", "data_curation/__init__.py": "",
        "vldm/nn/__init__.py": "", "vldm/sampling/__init__.py": "", "vldm/training/__init__.py": "",
        "vldm/nn/unet.py": "def f():\n    from vldm.sampling.pipeline import run  # lazy, still counted\n",
        "vldm/sampling/pipeline.py": "from vldm.nn import unet\nrun = 1\n",
        "vldm/training/a.py": "from . import b\n", "vldm/training/b.py": "from vldm.training.a import x\n",
    })
    graph = import_graph(tmp_path)
    assert graph["vldm.nn.unet"] == {"vldm.sampling.pipeline"}
    assert layer_violations(graph) == [
        "vldm.nn.unet imports vldm.sampling.pipeline (vldm.nn is layer 1, vldm.sampling layer 6)"]
    assert cycles(graph) == [["vldm.nn.unet", "vldm.sampling.pipeline"], ["vldm.training.a", "vldm.training.b"]]


def test_a_same_layer_import_across_packages_is_refused() -> None:
    assert layer_violations({"data_curation.x": {"vldm.evaluation.motion"}}) == [
        "data_curation.x imports vldm.evaluation.motion (data_curation is layer 7, vldm.evaluation layer 7)"]
    with pytest.raises(ValueError, match="in no layer"):
        layer_of("vldm.newpackage.thing")
