"""The one plug-in mechanism: entries read from the plug-in files without importing them, loaded when used."""
from __future__ import annotations

import ast
import importlib
import sys
import textwrap

import pytest

from infoview.errors import ConfigError
from infoview.schema import Key
from infoview.utils.declarations import NOT_STATIC, Call, live_decl, static_value
from infoview.utils.registry import Registry


def _registries():
    from infoview.augment.recipes import _RECIPES
    from infoview.commands import _COMMANDS
    from infoview.data.registry import _SOURCES
    from infoview.objectives.registry import _OBJECTIVES
    from infoview.pretrain.methods.registry import _METHODS

    return {"objectives": _OBJECTIVES, "methods": _METHODS, "sources": _SOURCES, "recipes": _RECIPES,
            "commands": _COMMANDS}


@pytest.mark.parametrize("kind", ["objectives", "methods", "sources", "recipes", "commands"])
def test_what_is_read_from_each_file_is_what_the_file_declares_when_run(kind):
    """Every entry of every registry, read afresh from its file, against the loaded object's own declaration."""
    registry = _registries()[kind]
    fresh = Registry(registry.what, package=registry.package, decorator=registry.decorator,
                     describe=registry.describe, first=registry.first, key=registry._key,
                     module_name=registry._module_name)
    assert fresh.entries(), kind
    assert [e.key for e in fresh.entries()] == [e.key for e in registry.entries()][:len(fresh.entries())]
    for entry in fresh.entries():
        obj = entry.load()
        name = entry.name
        help_, meta = registry.describe(live_decl(name, obj, _decorator_kwargs(entry, registry)))
        assert entry.help == help_, entry
        for key, value in entry.meta.items():
            if value is not NOT_STATIC:
                assert value == meta[key], (entry, key)
        # what `infoview --help`, `pretrain --help` and `list` show comes without loading
        assert all(v is not NOT_STATIC for k, v in entry.meta.items() if k != "looks_like"), entry


def _decorator_kwargs(entry, registry) -> dict:
    """The decorator's keyword arguments as the file passes them, evaluated (the lambdas too)."""
    if registry.decorator is None:
        return {}
    module = sys.modules[entry.module]
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == registry.decorator and node.args and \
                getattr(node.args[0], "value", None) == entry.name and \
                (registry.package != "infoview.data.schemes" or any(
                    k.arg == "kind" and k.value.value == entry.meta["kind"] for k in node.keywords)):
            return {k.arg: eval(compile(ast.Expression(k.value), module.__file__, "eval"), vars(module))
                    for k in node.keywords}
    raise AssertionError(f"no @{registry.decorator}({entry.name!r}) in {module.__file__}")


def test_values_are_read_where_written_with_literals_keys_and_the_files_constants():
    env = {"CHOICES": ("a", "b"), "ROOT": "x"}

    def read(text):
        return static_value(ast.parse(text, mode="eval").body, env)

    assert read("{'k': Key(1, 'help', choices=CHOICES, min=0), 'f': 3 / 7, **{'z': -1}}") == {
        "k": Key(1, "help", choices=("a", "b"), min=0), "f": 3 / 7, "z": -1}
    assert read("f'{ROOT}:<path>' 'more'") == "x:<path>more"
    assert read("Command(help='h', run=go)") is NOT_STATIC  # `go` is code
    assert read("Command(help='h')") == Call("Command", (), {"help": "h"})
    assert read("open('x')") == Call("open", ("x",), {})  # a call it does not know is recorded, never made
    for code in ("lambda t: t", "IMPORTED", "[*CHOICES]", "open(x)"):
        assert read(code) is NOT_STATIC, code


@pytest.fixture
def widgets(tmp_path, monkeypatch):
    """A package ``widgets`` whose modules are plug-ins of a registry of its own."""
    pkg = tmp_path / "widgets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from infoview.utils.declarations import NOT_STATIC
        from infoview.utils.registry import Registry, first_line

        def _describe(decl):
            return first_line(decl.doc), {"size": decl.attr("SIZE", NOT_STATIC)}

        REGISTRY = Registry("widget", listing="Widgets", package=__name__, decorator="widget", describe=_describe)
        widget = REGISTRY.register
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m == "widgets" or m.startswith("widgets.")]:
        del sys.modules[name]


def _write(pkg, name: str, text: str) -> None:
    (pkg / f"{name}.py").write_text(textwrap.dedent(text))


def test_listing_imports_no_plug_in_and_loading_imports_one(widgets):
    _write(widgets, "small", '''
        from widgets import widget
        SMALL = 2

        @widget("small")
        class Small:
            """A small widget."""
            SIZE = SMALL
    ''')
    _write(widgets, "big", '''
        import os, sys  # stands for torch: what listing must not import
        sys.modules["widgets.big_was_imported"] = sys.modules[__name__]
        from widgets import widget

        @widget("big")
        class Big:
            """A big widget."""
            SIZE = int(os.environ.get("SIZE", "100"))  # code: read when loaded
    ''')
    registry = importlib.import_module("widgets").REGISTRY
    assert registry.names() == ["big", "small"] and registry.entry("small").help == "A small widget."
    assert registry.meta("small", "size") == 2 and "widgets.small" not in sys.modules
    assert "widgets.big_was_imported" not in sys.modules
    assert registry.meta("big", "size") == 100 and "widgets.big_was_imported" in sys.modules  # loaded to know
    assert registry.get("small").__name__ == "Small" and registry.get("small").name == "small"
    with pytest.raises(ConfigError, match=r"^unknown widget 'smal'; did you mean 'small'\? Widgets: big, small$"):
        registry.get("smal")


def test_a_file_that_runs_otherwise_than_it_reads_is_refused_when_loaded(widgets):
    _write(widgets, "odd", '''
        from widgets import widget
        SIZE = 1
        SIZE += 1  # the reader does not run this line

        @widget("odd")
        class Odd:
            """Odd."""
            SIZE = SIZE
    ''')
    registry = importlib.import_module("widgets").REGISTRY
    assert registry.meta("odd", "size") == 1
    with pytest.raises(ValueError, match=r"widget 'odd' \(widgets.odd:Odd\): what its file declares \(size\)"):
        registry.get("odd")


def test_one_name_twice_is_an_error_and_a_folder_that_leaves_takes_its_plug_ins(widgets, tmp_path):
    _write(widgets, "one", '''
        from widgets import widget

        @widget("w")
        class One:
            """One."""
    ''')
    extra = tmp_path / "extra"
    extra.mkdir()
    _write(extra, "two", '''
        from widgets import widget

        @widget("w")
        class Two:
            """Two."""
    ''')
    package = importlib.import_module("widgets")
    package.__path__.append(str(extra))
    with pytest.raises(ValueError, match="widget 'w' is already registered by widgets.one:One"):
        package.REGISTRY.names()
    package.__path__.remove(str(extra))
    assert package.REGISTRY.names() == ["w"] and package.REGISTRY.get("w").__name__ == "One"


def test_a_module_plug_in_is_checked_against_its_file_when_loaded(widgets):
    """Commands and recipes are modules: loading one checks what its file, run, declares."""
    from infoview.utils.declarations import NOT_STATIC as _NS
    from infoview.utils.registry import first_line

    _write(widgets, "plain", '''
        """A plain gadget."""
        SIZE = 3
    ''')
    _write(widgets, "shifty", '''
        """A shifty gadget."""
        SIZE = 3
        SIZE *= 2
    ''')
    gadgets = Registry("gadget", package="widgets",
                       describe=lambda decl: (first_line(decl.doc), {"size": decl.attr("SIZE", _NS)}))
    assert gadgets.names() == ["plain", "shifty"] and gadgets.entry("plain").help == "A plain gadget."
    assert gadgets.get("plain").SIZE == 3
    with pytest.raises(ValueError, match=r"gadget 'shifty' \(widgets.shifty\): what its file declares \(size\)"):
        gadgets.get("shifty")
