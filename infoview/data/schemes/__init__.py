"""The built-in data source schemes, one module per scheme; importing a module registers its schemes.

:mod:`infoview.data.registry` imports every module of this package the first
time a source is opened or listed, so a new scheme is one new file here (plus
its test), and nothing else changes. ``LISTED`` orders how the schemes are
listed (``infoview list sources``, error messages): the modules it names
first, in its order, then any others by name.
"""
from __future__ import annotations

import pkgutil
from functools import lru_cache

LISTED = ("digits", "shapes", "torchvision_files", "folder", "coco", "beton", "pennfudan", "masks")


@lru_cache(maxsize=1)
def modules() -> tuple[str, ...]:
    """Full names of this package's modules, in listing order."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    found.sort(key=lambda m: (LISTED.index(m) if m in LISTED else len(LISTED), m))
    return tuple(f"{__name__}.{m}" for m in found)
