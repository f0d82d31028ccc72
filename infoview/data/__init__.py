"""Data: source strings, the ffcv .beton writer, and loaders of uint8 batches.

- ``open_source("folder:/x", split="train")`` -> an indexable ``ImageSource``
  of ``(uint8 HxWx3 image, int label)`` (see ``sources`` for the strings);
- ``ShapesSource`` also gives boxes and instance masks (``.targets(i)``);
- ``write_beton(source, "x.beton")`` (``infoview prepare``) writes an ffcv file;
- ``build_loader(source, batch_size, ...)`` yields ``(images uint8 (B,3,H,W)
  on device, labels int64)`` through ffcv or a PyTorch ``DataLoader``.

Names are imported on first use, so ``infoview prepare --help`` stays quick;
nothing imports ffcv (or numba) until an ffcv path runs.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "BetonFile": "infoview.data.beton",
    "BetonSource": "infoview.data.beton",
    "ffcv_import_error": "infoview.data.beton",
    "write_beton": "infoview.data.beton",
    "build_loader": "infoview.data.loader",
    "fit_square": "infoview.data.loader",
    "shard_order": "infoview.data.loader",
    "ShapesSource": "infoview.data.shapes",
    "SCHEMES": "infoview.data.sources",
    "ArraySource": "infoview.data.sources",
    "FolderSource": "infoview.data.sources",
    "CocoSource": "infoview.data.sources",
    "ImageSource": "infoview.data.sources",
    "open_source": "infoview.data.sources",
    "check_held_out": "infoview.data.sources",
    "parse_source": "infoview.data.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infoview.data' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
