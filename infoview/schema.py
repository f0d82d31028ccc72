"""A command's keys as a schema: each key's default, one line of help, and its choices or bounds.

A command's ``DEFAULTS`` is a nested dict whose leaves are plain defaults or
:class:`Key` entries::

    DEFAULTS = {
        "out_dir": Key("runs/pretrain", "where the run writes its checkpoints, metrics and plots"),
        "optim": {
            "name": Key("sgd", "the optimiser", choices=("sgd", "lars", "adamw")),
            "lr": Key(0.3, "peak learning rate at optim.ref_batch", above=0),
        },
    }

:func:`defaults` gives the plain tree that :func:`infoview.config.resolve`
merges; :func:`check` checks a resolved config against the choices and
bounds (one :class:`~infoview.errors.ConfigError` naming the key, the value,
what was expected and what the key is for), before any work starts;
:func:`describe` renders the keys with their defaults and help for
``infoview <command> --help``. A plain leaf is a key without help or checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import yaml
from omegaconf import OmegaConf

from infoview.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One key: its default, one line of help, and what values it takes.

    - ``choices``: the values allowed (None among them allows null);
    - ``min`` / ``max``: inclusive bounds of a number (a list: of each item);
    - ``above`` / ``below``: exclusive bounds (``above=0``: positive; ``min=0, below=1``: in [0, 1));
    - ``nullable``: null is allowed besides the choices or bounds.
    """

    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    nullable: bool = False

    def expected(self) -> str:
        """What the key takes, in words (``one of a, b``, ``at least 1``, ``in [0, 1)``, ``positive``)."""
        if self.choices is not None:
            return "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)
        low = f"[{self.min:g}" if self.min is not None else f"({self.above:g}" if self.above is not None else ""
        high = f"{self.max:g}]" if self.max is not None else f"{self.below:g})" if self.below is not None else ""
        if low and high:
            text = f"in {low}, {high}"
        elif self.min is not None:
            text = f"at least {self.min:g}"
        elif self.above is not None:
            text = "positive" if self.above == 0 else f"above {self.above:g}"
        elif self.max is not None:
            text = f"at most {self.max:g}"
        elif self.below is not None:
            text = f"below {self.below:g}"
        else:
            text = ""
        return text + (" (or null)" if text and self.nullable else "")

    def violation(self, value: Any) -> bool:
        """True when ``value`` is outside the choices or bounds."""
        if value is None:
            return not (self.nullable or self.default is None or (self.choices is not None and None in self.choices))
        if self.choices is not None:
            return value not in self.choices
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                if self.min is None and self.max is None and self.above is None and self.below is None:
                    continue
                return True
            if math.isnan(item):
                return True
            if self.above is not None and not item > self.above:
                return True
            if self.min is not None and item < self.min:
                return True
            if self.max is not None and item > self.max:
                return True
            if self.below is not None and not item < self.below:
                return True
        return False


def _walk(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            yield from _walk(value, key + ".")
        else:
            yield key, value


def defaults(tree: Mapping) -> dict:
    """The plain defaults of a schema tree (:class:`Key` leaves replaced by their default)."""
    out: dict = {}
    for name, value in tree.items():
        if isinstance(value, Key):
            out[name] = value.default
        elif isinstance(value, Mapping) and value:
            out[name] = defaults(value)
        else:
            out[name] = value
    return out


def keys(tree: Mapping) -> dict[str, Key]:
    """``{dotted key: Key}`` for every leaf that is a :class:`Key`."""
    return {k: v for k, v in _walk(tree) if isinstance(v, Key)}


def _get(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        try:
            if part not in node:
                return False, None
            node = node[part]
        except TypeError:
            return False, None
    return True, node


def check(cfg: Any, tree: Mapping) -> None:
    """Every :class:`Key` of ``tree`` against its value in ``cfg``: the first violation is a ConfigError."""
    for dotted, key in keys(tree).items():
        present, value = _get(cfg, dotted)
        if not present:
            continue
        if OmegaConf.is_config(value):  # a list or section of a resolved config: plain values to check
            value = OmegaConf.to_container(value)
        if key.violation(value):
            what = f" ({key.help})" if key.help else ""
            each = "a list, each item " if isinstance(key.default, (list, tuple)) and key.choices is None else ""
            raise ConfigError(f"{dotted} must be {each}{key.expected()}, got {value!r}{what}")


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text.removesuffix("...").strip()


def describe(tree: Mapping, indent: str = "  ") -> str:
    """The keys as YAML with their defaults, and each key's help (and choices or bounds) after a ``#``."""
    rows: list[tuple[str, str]] = []

    def visit(node: Mapping, depth: int) -> None:
        for name, value in node.items():
            pad = indent * depth
            if isinstance(value, Mapping) and value:
                rows.append((f"{pad}{name}:", ""))
                visit(value, depth + 1)
                continue
            key = value if isinstance(value, Key) else None
            default = key.default if key else value
            note = ""
            if key:
                expected = key.expected()
                note = key.help + (f" [{expected}]" if expected else "")
            rows.append((f"{pad}{name}: {_yaml_value(default)}", note))

    visit(tree, 1)
    width = min(max((len(left) for left, note in rows if note), default=0), 44)
    return "\n".join(f"{left:<{width}}  # {note}" if note else left for left, note in rows)
