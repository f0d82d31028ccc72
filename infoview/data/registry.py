"""Data source schemes: a source string names a registered scheme; one grammar for every kind of data.

A source string is ``scheme[:arg[:arg...]]``: ``digits``, ``folder:/data/pets``,
``coco:/data/coco/images:/data/coco/instances.json``.

- The scheme is the text before the first ``:``; its arguments follow, separated by ``:``.
- A scheme takes as many arguments as its opener has positional parameters
  (those with a default are optional); an empty argument is an error.
- Where the string holds more ``:`` than that, the extra ones belong to the
  first argument: the first path may contain ``:``, the later ones may not
  (``coco:/a:b/images:/x/ann.json`` reads images from ``/a:b/images``).

A scheme registers one opener per kind of data it gives (``KINDS``):

============  ====================================================  ==================================
kind          what the opener returns                               options it may take
============  ====================================================  ==================================
images        an ``ImageSource`` of (uint8 HxWx3 image, int label)  split, download
detection     a ``DetectionDataset`` (boxes and instance masks)     (none)
segmentation  (train, val) ``SegmentationSource`` splits            train_split, val_split, size, seed
============  ====================================================  ==================================

``@register_source(name, kind=..., usage=..., help=...)`` decorates an opener:
its positional parameters are the source's arguments, its keyword-only
parameters the options of its kind that it uses (the others are not passed to
it). The built-in schemes live in :mod:`infoview.data.schemes`, one module per
scheme: the registry (:mod:`infoview.utils.registry`) reads their
``@register_source`` from the files, so listing the schemes imports none of
them, and imports a module when its opener is first used; any other module
can register a scheme the same way. An unknown scheme, a scheme that does not
give the kind asked for, and a wrong number of arguments are a
:class:`~infoview.errors.ConfigError` that lists the valid schemes of the kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import infoview.data.schemes as builtin_schemes
from infoview.config import nearest
from infoview.errors import ConfigError
from infoview.utils.declarations import EMPTY, NOT_STATIC, Decl
from infoview.utils.registry import Entry, Registry

#: kind -> (what a source of that kind has, the options an opener of that kind may take)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "images": ("images with class labels", ("split", "download")),
    "detection": ("boxes and instance masks", ()),
    "segmentation": ("per-pixel labels", ("train_split", "val_split", "size", "seed")),
}
#: how error messages name a source of each kind
LABELS = {"images": "data source", "detection": "detection data source", "segmentation": "segmentation data source"}

@dataclass(frozen=True)
class Scheme:
    """One registered (scheme, kind): how to write it, what it reads, and its opener (imported when used)."""

    name: str
    kind: str
    usage: str  # how to write it: "coco:<images folder>:<instances.json>"
    help: str  # one line: what it reads
    min_args: int
    max_args: int
    options: tuple[str, ...]  # the kind's options that the opener takes
    entry: Entry = field(repr=False, compare=False)

    @property
    def opener(self) -> Callable[..., Any]:
        return self.entry.load()

    @property
    def looks_like(self) -> Callable[[str], bool] | None:
        """Whether a string without the scheme would be read by it (``x.beton`` for ``beton``)."""
        return _SOURCES.meta(self.entry.key, "looks_like") if self.entry.meta.get("looks_like") is not None else None

    def arguments(self, source: str, rest: str) -> list[str]:
        """The arguments of ``source`` (whose text after the scheme's ``:`` is ``rest``)."""
        if self.max_args == 0:
            if rest:
                raise ConfigError(f"'{self.name}' takes no argument, got '{source}'")
            return []
        parts = rest.split(":") if rest else []
        if len(parts) > self.max_args:  # the extra colons belong to the first argument
            cut = len(parts) - self.max_args + 1
            parts = [":".join(parts[:cut]), *parts[cut:]]
        if len(parts) < self.min_args or not all(p.strip() for p in parts):
            raise ConfigError(f"{LABELS[self.kind]} '{source}' must be {self.usage} ({self.help})")
        return parts


def _describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    """A scheme's entry, from ``@register_source``'s arguments and the opener's parameters."""
    name, kind, opener = decl.name, decl.kwargs.get("kind"), decl.target.partition(":")[2]
    if kind not in KINDS:
        raise ValueError(f"register_source({name!r}): kind must be one of {', '.join(KINDS)}, got {kind!r}")
    positional = [p for p in decl.params if p[1] == "positional"]
    options = tuple(p[0] for p in decl.params if p[1] == "keyword")
    allowed = KINDS[kind][1]
    if any(p[1] == "variadic" for p in decl.params) or set(options) - set(allowed):
        raise ValueError(
            f"register_source({name!r}, kind={kind!r}): {opener} must take the source's arguments "
            f"as positional parameters and only these keyword-only options: {', '.join(allowed) or 'none'}"
        )
    required = sum(1 for p in positional if p[2] is EMPTY)
    help_ = decl.kwargs.get("help", NOT_STATIC)
    return help_, {"kind": kind, "usage": decl.kwargs.get("usage", NOT_STATIC), "help": help_,
                   "min_args": required, "max_args": len(positional), "options": options,
                   "looks_like": decl.kwargs.get("looks_like")}


# the built-in schemes' modules in infoview/data/schemes/ (listed in LISTED's order, then by name); one entry
# per (scheme, kind), read from the files without importing them
_SOURCES = Registry("data source", package=builtin_schemes.__name__, decorator="register_source", describe=_describe,
                    first=builtin_schemes.LISTED, key=lambda name, meta: (name, meta["kind"]))


def register_source(name: str, *, kind: str, usage: str, help: str,
                    looks_like: Callable[[str], bool] | None = None) -> Callable:
    """Decorator: register ``opener`` as scheme ``name`` for ``kind`` (see the module docstring).

    ``usage`` is how the source is written (``folder:<path>``), ``help`` one
    line on what it reads. ``looks_like(text)`` says whether a string written
    without the scheme would be read by it (``x.beton`` for ``beton``); an
    unknown source that it accepts gets "did you mean <name>:<text>?".
    """
    if kind not in KINDS:
        raise ValueError(f"register_source({name!r}): kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_source({name!r}): a scheme is letters, digits, '_' or '-'")
    register = _SOURCES.register(name, kind=kind, usage=usage, help=help, looks_like=looks_like)

    def decorate(opener: Callable) -> Callable:
        _SOURCES.entries()
        first = _SOURCES.items.get((name, kind))
        if first is not None and (first.obj is not None or first.target != f"{opener.__module__}:{opener.__qualname__}"):
            raise ValueError(f"scheme {name!r} is already registered for {kind} (by {first.target.replace(':', '.')})")
        return register(opener)

    return decorate


def schemes(kind: str | None = None) -> list[Scheme]:
    """Registered schemes (of ``kind``, or all), in listing order: built-in modules first, as they are listed."""
    if kind is not None:
        _check_kind(kind)
    return [_scheme(e) for e in _SOURCES.entries() if kind is None or e.meta["kind"] == kind]


def _scheme(entry: Entry) -> Scheme:
    m = {k: v if v is not NOT_STATIC or k == "looks_like" else _SOURCES.meta(entry.key, k)
         for k, v in entry.meta.items()}
    return Scheme(entry.name, m["kind"], m["usage"], m["help"], m["min_args"], m["max_args"], m["options"], entry)


def usages(kind: str) -> str:
    """``"digits, shapes, cifar10:<root>, ..."``: how each scheme of ``kind`` is written."""
    return ", ".join(s.usage for s in schemes(kind))


def resolve(kind: str, source: str) -> tuple[Scheme, list[str]]:
    """The scheme of ``kind`` that ``source`` names, and its arguments; a ConfigError when there is none."""
    label = LABELS[_check_kind(kind)]
    text = source.strip() if isinstance(source, str) else ""
    if not text:
        raise ConfigError(f"empty {label}; expected one of: {usages(kind)}")
    name, _, rest = text.partition(":")
    entry = _SOURCES.entries() and _SOURCES.items.get((name, kind))
    if not entry:
        raise _unknown(kind, text, name, rest)
    scheme = _scheme(entry)
    return scheme, scheme.arguments(text, rest)


def open_as(kind: str, source: str, **options: Any) -> Any:
    """Open ``source`` as data of ``kind``; ``options`` are the kind's (each opener gets those it takes)."""
    scheme, args = resolve(kind, source)
    unknown = set(options) - set(KINDS[kind][1])
    if unknown:
        raise TypeError(f"open_as({kind!r}): unknown option(s) {', '.join(sorted(unknown))}")
    return scheme.opener(*args, **{k: v for k, v in options.items() if k in scheme.options})


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _unknown(kind: str, source: str, name: str, rest: str) -> ConfigError:
    label, listed = LABELS[kind], usages(kind)
    others = [s.kind for s in schemes() if s.name == name]
    if others:
        return ConfigError(
            f"{label} '{source}': '{name}' has no {KINDS[kind][0]} (it is a source of {', '.join(others)}); "
            f"expected one of: {listed}"
        )
    hint = next((f" (did you mean {s.name}:{source}?)" for s in schemes(kind) if s.looks_like and s.looks_like(source)),
                "")
    if not hint and ":" in source:
        near = nearest(name, sorted({s.name for s in schemes(kind)}))
        hint = f" (did you mean {near}:{rest}?)" if near else ""
    return ConfigError(f"unknown {label} '{source}'{hint}; expected one of: {listed}")
