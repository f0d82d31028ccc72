"""The objectives' registry: one entry per family class, read from the files of this package without importing
them (``infoview list objectives`` and ``--help`` stay free of torch); the class is imported when built.

An entry keeps the class's one-line title, its parameters with their defaults (its ``__init__``'s) and
``certifies`` (what its ``.mi`` is); ``register``, ``build`` and ``available`` are the package's public ones.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from infoview.config import did_you_mean
from infoview.errors import ConfigError
from infoview.utils.declarations import EMPTY, NOT_STATIC, Decl
from infoview.utils.registry import Registry, first_line

T = TypeVar("T", bound=type)


def _describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    params: Any = NOT_STATIC
    if decl.params is not None and all(d is not NOT_STATIC for _, _, d in decl.params):
        params = {name: default for name, kind, default in decl.params if kind != "variadic"}
    return first_line(decl.doc), {"params": params, "certifies": decl.attr("certifies", NOT_STATIC)}


_OBJECTIVES = Registry("objective", package="infoview.objectives", decorator="register", describe=_describe)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("infonce")`` makes the class buildable by name."""
    return _OBJECTIVES.register(name)


def available() -> list[str]:
    """The objectives' names, sorted (nothing imported)."""
    return sorted(_OBJECTIVES.names())


def objective_params(name: str) -> dict[str, object]:
    """The keyword arguments an objective takes, with their defaults (``inspect.Parameter.empty``: none)."""
    return dict(_OBJECTIVES.meta(name, "params"))


def objective_certifies(name: str) -> str:
    """One line: what the objective's ``.mi`` certifies and its ceiling."""
    return _OBJECTIVES.meta(name, "certifies")


def objective_title(name: str) -> str:
    """The first line of the objective's docstring."""
    return _OBJECTIVES.entry(name).help


def objective_class(name: str) -> type:
    """The class registered as ``name`` (imported now); an unknown name is a ConfigError naming the nearest."""
    return _OBJECTIVES.get(name)


def build(name: str, **kwargs):
    """Make an objective by name; unknown names and keys are errors naming the valid ones."""
    params = objective_params(name)
    for key in kwargs:
        if key not in params:
            msg = f"objective '{name}' has no parameter '{key}'" + did_you_mean(key, params)
            raise ConfigError(msg + " Parameters: " + (", ".join(params) or "none"))
    return objective_class(name)(**kwargs)


__all__ = ["EMPTY", "available", "build", "objective_certifies", "objective_class", "objective_params",
           "objective_title", "register"]
