"""The import contract: infoview's layers import one way, downwards (docs/architecture.md draws them).

Every import in every module counts, also those inside functions (lazy imports
keep start-up light; they must not hide a loop) and those by string
(``importlib.import_module("infoview.eval.linear")``). A layer may import the
layers below it; packages that share a layer do not import each other.
Imports are absolute (a relative one hides where a module reaches), and a
private name (``_check``) stays in its package: another package that needs it
asks for a public one. Each command module counts as a package of its own
(commands do not lean on one another's private parts; their shared helpers
are the ``_`` modules of infoview.commands).
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
    {"infoview.training"},  # the machinery every trainer shares: nothing of images
    {"infoview.backbones"},  # encoders from configs and checkpoints, specs, exports, features, kNN
    {"infoview.pretrain", "infoview.eval", "infoview.mi_bench"},
    {"infoview.commands"},
    {"infoview.cli"},
    {"infoview.__main__", "infoview"},  # infoview/__init__.py: the front door, what scripts import
]
#: the base layer's parts may use one another (config reads files through utils, everything raises errors)
BASE_SHARES = True
#: the functions that import the module a string names
IMPORTERS = {"import_module", "__import__"}


def _unit(module: str) -> str:
    """The layer unit a dotted module belongs to (``infoview.training.checkpoint`` -> ``infoview.training``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (ROOT.parent.joinpath(*module.split(".")) / "__init__.py").is_file()


def _is_module(module: str) -> bool:
    return _is_package(module) or ROOT.parent.joinpath(*module.split(".")).with_suffix(".py").is_file()


def _owner(module: str) -> str:
    """The package whose private names ``module`` may use: its own package (itself for a command module)."""
    parts = module.split(".")
    if _is_package(module) or (parts[:2] == ["infoview", "commands"] and not parts[-1].startswith("_")):
        return module
    return ".".join(parts[:-1])


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _string_import(node: ast.Call) -> str | None:
    """The infoview module an ``import_module("...")`` / ``__import__("...")`` call names by a literal (or the
    literal start of an f-string), else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in IMPORTERS or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        arg = arg.values[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("infoview"):
        return arg.value.rstrip(".")
    return None


def _imports(tree: ast.AST):
    """(line, imported module, names taken from it) for every import of infoview, anywhere in the file: the
    statements, and the calls that import a module a string names. A relative import is (line, None, ())."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "infoview":
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node.lineno, None, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "infoview":
            if node.module == "infoview":  # from infoview import errors, or a name of the front door
                for alias in node.names:
                    sub = f"infoview.{alias.name}"
                    yield node.lineno, sub if _unit(sub) in LEVEL else "infoview", ()
            else:
                yield node.lineno, node.module, tuple(a.name for a in node.names)
        elif isinstance(node, ast.Call) and (target := _string_import(node)):
            yield node.lineno, target, ()


def _layer_violation(here: str, target: str) -> str | None:
    there = _unit(target)
    if there == here:
        return None
    if there not in LEVEL:
        return f"imports {target}, which is in no layer"
    if LEVEL[there] > LEVEL[here]:
        return f"imports {target} from a layer above"
    if LEVEL[there] == LEVEL[here] and not (LEVEL[here] == 0 and BASE_SHARES):
        return f"imports {target}, a peer in its own layer"
    return None


def _private_uses(module: str, target: str, names: tuple[str, ...]):
    """The private parts of ``target`` (its ``_`` modules on the way, the ``_`` names taken) that ``module``,
    outside their package, uses."""
    parts = target.split(".")
    for i, part in enumerate(parts[1:], start=1):
        scope = ".".join(parts[:i])
        if _private(part) and not (module == scope or module.startswith(scope + ".")):
            yield ".".join(parts[:i + 1])
    owner = _owner(target)
    for name in names:
        inside = module == owner or module.startswith(owner + ".") or _owner(module) == owner
        if _private(name) and not inside:
            yield f"{target}.{name}"


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """``{local name: infoview module}`` for the imports that bind a module (``from infoview.x import y as z``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("infoview.")})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("infoview"):
            for a in node.names:
                if _is_module(f"{node.module}.{a.name}"):
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _private_attributes(tree: ast.AST, module: str):
    """(line, dotted name) for ``alias._name`` where ``alias`` is an infoview module of another package."""
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            for used in _private_uses(module, aliases[node.value.id], (node.attr,)):
                yield node.lineno, used


def _file_violations(path: Path) -> list[str]:
    module = _module_name(path)
    here, where = _unit(module), path.relative_to(ROOT.parent)
    if here not in LEVEL:
        return [f"{where}: package {here} is in no layer of tests/test_architecture.py"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for line, target, names in _imports(tree):
        if target is None:
            found.append(f"{where}:{line} imports relatively; write the absolute infoview.<...> name")
            continue
        if (bad := _layer_violation(here, target)) is not None:
            found.append(f"{where}:{line} {bad}")
        found += [f"{where}:{line} uses {used}, private to its package" for used in _private_uses(module, target, names)]
    found += [f"{where}:{line} uses {used}, private to its package" for line, used in _private_attributes(tree, module)]
    return found


def violations() -> list[str]:
    return [v for path in sorted(ROOT.rglob("*.py")) for v in _file_violations(path)]


def test_imports_run_one_way():
    assert violations() == []


def test_every_package_is_in_a_layer():
    packages = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert packages <= set(LEVEL), sorted(packages - set(LEVEL))


def test_every_folder_of_modules_is_a_package_so_that_a_wheel_ships_it():
    """setup.py's find_packages takes folders with an __init__.py only: a namespace folder (runtime/ was one)
    is left out of a wheel, whose install then fails at its first import from there."""
    folders = {p.parent for p in ROOT.rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT.parent)) for f in folders if not (f / "__init__.py").is_file()) == []


@pytest.mark.parametrize("source, target, bad", [
    ("infoview/models/x.py", "from infoview.training.checkpoint import load_checkpoint", "from a layer above"),
    ("infoview/pretrain/x.py", "def f():\n    from infoview.eval import knn", "a peer in its own layer"),
    ("infoview/training/x.py", "import infoview.commands", "from a layer above"),
    ("infoview/training/x.py", "from infoview.backbones.export import load_backbone", "from a layer above"),
    ("infoview/eval/x.py", "from infoview.training import distributed as D", None),
    ("infoview/models/x.py", "from infoview import load_backbone", "from a layer above"),  # the front door
    ("infoview/mi_bench/x.py", "from infoview.eval.linear import run", "a peer in its own layer"),
    # relative imports, imports by string
    ("infoview/data/x.py", "from .loader import build_loader", "imports relatively"),
    ("infoview/data/x.py", "def f():\n    from . import loader", "imports relatively"),
    ("infoview/data/x.py", "import importlib\nm = importlib.import_module('infoview.eval.linear')",
     "imports infoview.eval.linear from a layer above"),
    ("infoview/data/x.py", "from importlib import import_module\nm = import_module(f'infoview.pretrain.{x}')",
     "imports infoview.pretrain from a layer above"),
    ("infoview/eval/x.py", "m = __import__('infoview.commands.pretrain')", "from a layer above"),
    ("infoview/commands/x.py", "import importlib\nm = importlib.import_module(f'{__name__}.{x}')", None),
])
def test_the_contract_catches_an_upward_import_even_inside_a_function_or_by_string(source, target, bad, tmp_path,
                                                                                   monkeypatch):
    (tmp_path / source).parent.mkdir(parents=True)
    _assert_caught(tmp_path, monkeypatch, source, target, bad)


def _assert_caught(tmp_path, monkeypatch, source: str, code: str, bad: str | None) -> None:
    """``code`` written as ``source`` in the tree at ``tmp_path``: the contract finds ``bad`` there, or nothing."""
    (tmp_path / source).write_text(code + "\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path / "infoview")
    found = violations()
    if bad is None:
        assert found == []
    else:
        assert len(found) == 1 and bad in found[0] and source in found[0]


@pytest.mark.parametrize("source, code, bad", [
    # what main had: eval/knn.py took runtime's _check_temperature; commands/distill.py called _pretrain._keys
    ("infoview/eval/knn.py", "from infoview.backbones.knn import _check_temperature",
     "uses infoview.backbones.knn._check_temperature, private to its package"),
    ("infoview/commands/distill.py", "from infoview.commands import pretrain as p\nkeys = p._keys()",
     "uses infoview.commands.pretrain._keys, private to its package"),
    ("infoview/commands/linear.py", "import infoview.commands.knn as k\nk._check(1)", "private to its package"),
    ("infoview/commands/x.py", "from infoview.pretrain._inner import helper", "uses infoview.pretrain._inner"),
    # inside one package, or a commands helper module: allowed
    ("infoview/data/resident.py", "from infoview.data.loader import _Base", None),
    ("infoview/commands/linear.py", "from infoview.commands._frozen import frozen_keys", None),
    ("infoview/commands/linear.py", "from infoview.commands import _frozen\n_frozen._help()", None),
])
def test_the_contract_catches_private_names_used_across_packages(source, code, bad, tmp_path, monkeypatch):
    root = tmp_path / "infoview"
    for package in ("", "data", "commands", "backbones", "pretrain", "eval"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for module in ("data/loader.py", "commands/_frozen.py", "commands/pretrain.py", "commands/knn.py",
                   "backbones/knn.py", "pretrain/_inner.py"):
        (root / module).write_text("")
    _assert_caught(tmp_path, monkeypatch, source, code, bad)
