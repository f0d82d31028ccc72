"""The methods' registry: one entry per ``@register_method`` class of this package, read from its file without
importing it, with its config section (``DEFAULTS``) and ``demo``: ``infoview pretrain --help`` and ``infoview
list methods`` import no torch; the class is imported when a run builds it (:func:`get_method`).
"""
from __future__ import annotations

from typing import Any, Callable

from infoview import schema
from infoview.config import flatten
from infoview.errors import ConfigError
from infoview.utils.declarations import NOT_STATIC, Decl
from infoview.utils.registry import Registry, first_line


def _describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    return first_line(decl.doc), {"keys": decl.attr("DEFAULTS", NOT_STATIC), "demo": decl.attr("demo", NOT_STATIC)}


# simclr, then moco, then the others by name: the order they are listed and their sections shown in
_METHODS = Registry("method", listing="Methods", package="infoview.pretrain.methods", decorator="register_method",
                    describe=_describe, first=("simclr", "moco"))


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("simclr")`` makes ``method=simclr`` build that class."""
    return _METHODS.register(name)


def available_methods() -> list[str]:
    """The registered method names, in listing order (simclr first; nothing imported)."""
    return _METHODS.names()


def get_method(name: str) -> type:
    """The class of method ``name`` (imported now); an unknown name is a ConfigError naming the nearest."""
    return _METHODS.get(name)


def method_help(name: str) -> str:
    """The first line of the method's docstring."""
    return _METHODS.entry(name).help


def method_demo(name: str) -> str:
    """A command that trains the method on the demo's digits ('' if none)."""
    return _METHODS.meta(name, "demo")


def method_sections() -> dict[str, dict]:
    """``{name: DEFAULTS}`` of every method: the sections ``infoview pretrain`` accepts (nothing imported)."""
    return {name: dict(_METHODS.meta(name, "keys")) for name in _METHODS.names()}


def check_method_sections(cfg) -> None:
    """A key set in another method's section is an error: ``moco.queue_size`` does nothing under method=simclr."""
    for name, section in method_sections().items():
        if name == cfg.method or name not in cfg:
            continue
        defaults = flatten(schema.defaults(section))
        for key, value in flatten(dict(cfg[name])).items():
            if key in defaults and value != defaults[key]:
                raise ConfigError(
                    f"{name}.{key}={value} configures method={name}, and this run is method={cfg.method}: "
                    f"remove it, or set method={name}"
                )
