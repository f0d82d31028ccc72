"""The import contract: infoview's layers import one way, downwards (docs/architecture.md draws them).

Every import in every module counts, also those inside functions (lazy imports
keep start-up light; they must not hide a loop). A layer may import the layers
below it; packages that share a layer do not import each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "infoview"

#: lowest first; each entry is one layer, a set of packages (or modules) that do not import each other
LAYERS = [
    {"infoview.errors", "infoview.utils", "infoview.config", "infoview.schema", "infoview.version"},
    {"infoview.objectives", "infoview.data", "infoview.augment", "infoview.models"},
    {"infoview.runtime"},
    {"infoview.pretrain", "infoview.eval"},
    {"infoview.commands"},
    {"infoview.cli"},
    {"infoview.__main__", "infoview"},  # infoview/__init__.py: the front door, what scripts import
]
#: the base layer's parts may use one another (config reads files through utils, everything raises errors)
BASE_SHARES = True


def _unit(module: str) -> str:
    """The layer unit a dotted module belongs to (``infoview.runtime.checkpoint`` -> ``infoview.runtime``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """(line, imported module) for every ``import`` and ``from ... import`` of infoview, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "infoview":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "infoview":
                if node.module == "infoview":  # from infoview import errors, or a name of the front door
                    for alias in node.names:
                        sub = f"infoview.{alias.name}"
                        yield node.lineno, sub if _unit(sub) in LEVEL else "infoview"
                else:
                    yield node.lineno, node.module


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _unit(_module_name(path))
        if here not in LEVEL:
            found.append(f"{path.relative_to(ROOT.parent)}: package {here} is in no layer of tests/test_architecture.py")
            continue
        for line, target in _imports(path):
            there = _unit(target)
            if there == here:
                continue
            if there not in LEVEL:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}, which is in no layer")
            elif LEVEL[there] > LEVEL[here]:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} from a layer above")
            elif LEVEL[there] == LEVEL[here] and not (LEVEL[here] == 0 and BASE_SHARES):
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}, a peer in its own layer")
    return found


def test_imports_run_one_way():
    assert violations() == []


def test_every_package_is_in_a_layer():
    packages = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert packages <= set(LEVEL), sorted(packages - set(LEVEL))


@pytest.mark.parametrize("source, target, bad", [
    ("infoview/models/x.py", "from infoview.runtime.checkpoint import load_checkpoint", "from a layer above"),
    ("infoview/pretrain/x.py", "def f():\n    from infoview.eval import knn", "a peer in its own layer"),
    ("infoview/runtime/x.py", "import infoview.commands", "from a layer above"),
    ("infoview/eval/x.py", "from infoview.runtime import distributed as D", None),
    ("infoview/models/x.py", "from infoview import load_backbone", "from a layer above"),  # the front door
])
def test_the_contract_catches_an_upward_import_even_inside_a_function(source, target, bad, tmp_path, monkeypatch):
    root = tmp_path / "infoview"
    path = tmp_path / source
    path.parent.mkdir(parents=True)
    path.write_text(target + "\n")
    monkeypatch.setitem(globals(), "ROOT", root)
    found = violations()
    if bad is None:
        assert found == []
    else:
        assert len(found) == 1 and bad in found[0] and source in found[0]
