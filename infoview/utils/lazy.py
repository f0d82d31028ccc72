"""Lazy package exports: a package names what it offers and the module each lives in, and the module is
imported the first time the name is used, so importing the package (for ``--help``, ``list``) stays light.

``__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)`` in a package's ``__init__``; ``EXPORTS`` maps a
name to its module, absolute (``"infoview.data.sources"``) or a submodule of the package (``"pairs"``).
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], *, fresh: tuple[str, ...] = ()
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The package's module-level ``__getattr__`` and ``__dir__``. A value found is kept in the package's
    namespace, but for the names in ``fresh``, read afresh each time (a registry that plug-ins may join)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        if name not in fresh:
            vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
