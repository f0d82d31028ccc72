"""One plug-in mechanism: objectives, methods, data schemes, view recipes and commands (evaluators among them).

A :class:`Registry` holds :class:`Entry` rows: a name, one line of help, the
import path of what it names (``"module:attr"``, or a module), and light
metadata (a method's keys, a scheme's usage, an objective's parameters). The
entries of a package's plug-in files are read from their source without
running them (:mod:`infoview.utils.declarations`), so listing names, help and
keys imports nothing heavy; :meth:`Entry.load` imports the module the first
time the thing itself is needed. A plug-in file registers itself with the
registry's decorator (``@register_method("moco")``); that the decorator runs
when the file is imported also checks that the file, run, declares what was
read from it. Something registered from elsewhere (a test, a user's script)
joins the registry when its decorator runs.

Adding a plug-in is one file in the registry's package, plus its test:
nothing else lists it.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from infoview.config import did_you_mean
from infoview.errors import ConfigError
from infoview.utils.declarations import NOT_STATIC, Decl, live_decl, read_file

#: ``describe(decl) -> (help, metadata)``: what an entry of a registry keeps of a plug-in's declaration
Describe = Callable[[Decl], "tuple[str, dict[str, Any]]"]


def first_line(text: str | None) -> str:
    """The first line of a docstring that is not blank."""
    return next((line.strip() for line in (text or "").strip().splitlines() if line.strip()), "")


def _default_describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    return first_line(decl.doc), {}


@dataclass
class Entry:
    """One plug-in: its name, one line of help, where it lives (``module:attr``) and its light metadata."""

    name: str
    help: str
    target: str
    meta: dict[str, Any] = field(default_factory=dict)
    key: Hashable = None
    obj: Any = field(default=None, repr=False, compare=False)  # what load() gave (set when the decorator runs)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def load(self) -> Any:
        """What the entry names, its module imported on first use."""
        if self.obj is None:
            module, _, attr = self.target.partition(":")
            obj = importlib.import_module(module)
            if self.obj is None:  # the decorator did not hand it over
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
                self.obj = obj
        return self.obj


class Registry:
    """Entries of one kind, by name (or by ``key(name, meta)``), read from ``package``'s plug-in files.

    - ``what`` names the kind in errors ("unknown method 'x'"); ``listing`` heads the names an unknown-name
      error lists ("Methods: a, b"); ``error`` is the error's class;
    - ``package``: the dotted name of the package whose modules are plug-in files (its ``__path__``, so a
      folder added to it counts too); modules whose name starts with ``_`` are helpers;
    - ``decorator``: the name of the decorator that registers a plug-in in those files, or None when each
      module is one plug-in (a command), named by ``module_name(file stem)``;
    - ``describe(decl)``: (help, metadata) of a declaration; the same function reads the file and the live
      object, and both must agree;
    - ``first``: modules listed first, in this order (the rest by name).
    """

    def __init__(self, what: str, listing: str = "Available", *, package: str | None = None,
                 decorator: str | None = None, describe: Describe = _default_describe, first: Iterable[str] = (),
                 key: Callable[[str, dict], Hashable] | None = None, module_name: Callable[[str], str] | None = None,
                 error: type[Exception] = ConfigError):
        self.what, self.listing, self.package, self.decorator = what, listing, package, decorator
        self.describe, self.first, self.error = describe, tuple(first), error
        self._key = key or (lambda name, meta: name)
        self._module_name = module_name or (lambda stem: stem)
        self.items: dict[Hashable, Entry] = {}
        self._scanned: set[str] = set()
        self._origin: dict[Hashable, str] = {}  # the file an entry was read from
        self._scanned_for: dict | None = None

    # ------------------------------------------------------------------ discovery (no imports but the package)

    def _files(self) -> list[tuple[str, Path]]:
        pkg = importlib.import_module(self.package)
        found: dict[str, Path] = {}
        for folder in pkg.__path__:
            for path in sorted(Path(folder).glob("*.py")):
                if not path.stem.startswith("_"):
                    found.setdefault(path.stem, path)
        rank = {m: i for i, m in enumerate(self.first)}
        return sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))

    def _discover(self) -> None:
        if self.package is None:
            return
        if self._scanned_for is not self.items:  # the dict was swapped (a test's scratch copy): read again
            self._scanned, self._origin, self._scanned_for = set(), {}, self.items
        files = self._files()
        current = {str(path) for _, path in files}
        for key, origin in list(self._origin.items()):  # a folder that left the package's path takes its files
            if origin not in current:
                self.items.pop(key, None)
                self._origin.pop(key)
                self._scanned.discard(origin)
        for stem, path in files:
            if str(path) in self._scanned:
                continue
            self._scanned.add(str(path))
            module = f"{self.package}.{stem}"
            loaded = sys.modules.get(module)
            if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__) != path:
                continue  # a module of that name came from elsewhere
            for decl in read_file(path, module, self.decorator, self._module_name(stem)):
                self._origin.setdefault(self._add(decl, None).key, str(path))

    def _add(self, decl: Decl, obj: Any) -> Entry:
        help_, meta = self.describe(decl)
        entry = Entry(decl.name, help_, decl.target, meta, self._key(decl.name, meta), obj)
        old = self.items.get(entry.key)
        if old is None:
            self.items[entry.key] = entry
            return entry
        if old.target != entry.target:
            raise ValueError(f"{self.what} '{decl.name}' is already registered by {old.target}")
        if obj is not None and old.obj is None:  # the file, run: it must declare what was read from it
            differs = [k for k in meta if old.meta.get(k, NOT_STATIC) is not NOT_STATIC and old.meta[k] != meta[k]]
            if old.help is NOT_STATIC:
                old.help = entry.help
            if old.help != entry.help or differs:
                raise ValueError(f"{self.what} '{decl.name}' ({entry.target}): what its file declares "
                                 f"({', '.join(differs) or 'help'}) reads differently without running it; write "
                                 "it with literals, Key(...) and the file's own constants")
            old.meta.update({k: v for k, v in meta.items() if old.meta.get(k, NOT_STATIC) is NOT_STATIC})
            old.obj = obj
        return old

    def register(self, name: str, **kwargs: Any) -> Callable[[Any], Any]:
        """Decorator: register a class or function as ``name`` (``kwargs``: what the decorator declares)."""

        def deco(obj: Any) -> Any:
            self._discover()
            decl = live_decl(name, obj, kwargs)
            old = self.items.get(self._key(name, self.describe(decl)[1]))
            if isinstance(old, Entry) and old.obj is not None and old.obj is not obj and old.target == (
                    f"{obj.__module__}:{obj.__qualname__}"):
                old.obj = None  # the same file imported again (a test re-imports it)
            self._add(decl, obj)
            if isinstance(obj, type):
                obj.name = name
            return obj

        return deco

    # ------------------------------------------------------------------ lookups

    def entries(self) -> list[Entry]:
        """Every entry, in listing order; nothing is imported."""
        self._discover()
        return list(self.items.values())

    def names(self) -> list[str]:
        """The registered names, in listing order (the package's files, then what registered itself)."""
        return [e.name for e in self.entries()]

    def entry(self, name: Hashable) -> Entry:
        """The entry of ``name``; an unknown name is an error naming the nearest and all."""
        self._discover()
        if name not in self.items:
            valid = sorted(str(k) for k in self.items)
            raise self.error(f"unknown {self.what} '{name}'" + did_you_mean(str(name), valid)
                             + f" {self.listing}: " + ", ".join(valid))
        return self.items[name]

    def get(self, name: Hashable) -> Any:
        """What ``name`` names (its module imported now if it was not)."""
        entry = self.entry(name)
        if self.decorator is None and entry.obj is None:  # a module plug-in: no decorator hands it over
            module = importlib.import_module(entry.module)
            self._add(live_decl(entry.name, module), module)  # which checks it against what was read
        return entry.load()

    def meta(self, name: Hashable, key: str) -> Any:
        """One item of an entry's metadata; one its file does not give without running is read after loading."""
        entry = self.entry(name)
        if entry.meta.get(key, NOT_STATIC) is NOT_STATIC:
            self.get(name)
            if entry.meta.get(key, NOT_STATIC) is NOT_STATIC:  # the module did not hand over its declaration
                entry.meta.update(self.describe(live_decl(entry.name, entry.obj))[1])
        return entry.meta[key]
