"""``cifar10:<root>``, ``cifar100:<root>``, ``stl10:<root>``: torchvision's files of those datasets under root.

Nothing is downloaded unless ``download=True`` (``infoview prepare ... download=true``);
without the files, the error says how to fetch them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infoview.data.registry import register_source
from infoview.data.sources import ArraySource, check_split
from infoview.errors import InfoviewError

SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"),
          "stl10": ("train", "test", "unlabeled", "train+unlabeled")}


def torchvision_source(kind: str, root: str, split: str, download: bool) -> ArraySource:
    import torchvision.datasets as tvd  # torchvision's datasets import slowly: only when read

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[kind]
    check_split(kind, split, SPLITS[kind])
    root_path = Path(root).expanduser()
    expected = root_path / cls.base_folder
    if not download and not expected.is_dir():
        hint = ""
        if (root_path / "train").is_dir() or (root_path / "test").is_dir():
            hint = f" ({root_path} looks like a folder of images per class: use folder:{root})"
        fetch = (f"python -c \"import torchvision; torchvision.datasets.{cls.__name__}('{root_path}', "
                 + ("split='train', " if kind == "stl10" else "") + "download=True)\"")
        raise InfoviewError(
            f"{kind}: no {kind.upper()} files at {expected}{hint}; fetch them once with {fetch}, "
            f"or with `infoview prepare {kind}:{root} OUT.beton download=true`, which also writes a .beton"
        )
    try:
        if kind == "stl10":
            ds = cls(str(root_path), split=split, download=download)
            images = ds.data.transpose(0, 2, 3, 1)  # stored (N, 3, 96, 96)
            labels = ds.labels
        else:
            ds = cls(str(root_path), train=(split == "train"), download=download)
            images, labels = ds.data, ds.targets
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise InfoviewError(f"{kind}: could not read the files under {expected}: {exc}") from None
    labels = np.asarray(labels, dtype=np.int64)
    return ArraySource(f"{kind}:{root}", images, labels, list(ds.classes), split)


@register_source("cifar10", kind="images", usage="cifar10:<root>",
                 help="torchvision's CIFAR-10 files (cifar-10-batches-py) under root; splits train, test")
def cifar10(root: str, *, split: str = "train", download: bool = False) -> ArraySource:
    return torchvision_source("cifar10", root, split, download)


@register_source("cifar100", kind="images", usage="cifar100:<root>",
                 help="torchvision's CIFAR-100 files (cifar-100-python) under root; splits train, test")
def cifar100(root: str, *, split: str = "train", download: bool = False) -> ArraySource:
    return torchvision_source("cifar100", root, split, download)


@register_source("stl10", kind="images", usage="stl10:<root>",
                 help="torchvision's STL-10 files (stl10_binary) under root; splits train, test, unlabeled, "
                      "train+unlabeled")
def stl10(root: str, *, split: str = "train", download: bool = False) -> ArraySource:
    return torchvision_source("stl10", root, split, download)
