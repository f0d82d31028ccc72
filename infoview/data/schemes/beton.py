"""``beton:<file>``: an ffcv .beton written by ``infoview prepare`` (read without ffcv; see infoview.data.beton)."""
from __future__ import annotations

from infoview.data.beton import BetonSource
from infoview.data.registry import register_source


@register_source("beton", kind="images", usage="beton:<file>",
                 help="an ffcv file written by `infoview prepare`; it holds the one split its record names",
                 looks_like=lambda text: text.endswith(".beton"))
def open_beton(file: str, *, split: str = "train") -> BetonSource:
    return BetonSource(file, split)
