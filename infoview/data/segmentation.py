"""Semantic-segmentation data for ``infoview segment``: every source of the ``segmentation`` kind.

A segmentation source yields ``(image, mask)`` pairs: the image an RGB
``uint8`` array (H, W, 3), the mask an ``int64`` array (H, W) of class ids.
``open_segmentation_splits(source, train_split, val_split, size, seed)``
opens a source string of the registry's ``segmentation`` kind as its train
and val splits:

``masks:<images_root>:<masks_root>`` or ``masks:<root>`` (``schemes/masks.py``)
    Images and single-channel masks paired by file stem, one folder per split
    in each root, or, with one root, each split's masks in a sibling folder
    of the same name plus ``annot`` (``train/`` beside ``trainannot/``).

``shapes`` (``schemes/shapes.py``)
    :class:`~infoview.data.shapes.ShapesSource` drawn at ``size`` pixels, as
    semantic masks: 1 = background, 2 = circle, 3 = square, 4 = triangle; id 0
    (void by default) does not occur. Splits ``train``, ``val``, ``test``.

:class:`SegmentationSet` turns either into tensors of one fixed side for
training (random resized crop + horizontal flip of image and mask together,
``torchvision.transforms.v2``; masks are resampled with nearest neighbour) or
evaluation (a resize of the whole image to ``size`` x ``size``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from infoview.data.registry import open_as
from infoview.errors import InfoviewError

#: mask value that is void whatever ``ignore_index`` says (the PASCAL VOC convention)
VOID = 255


class SegmentationSource:
    """Base: ``len``, ``load(i) -> (uint8 (H, W, 3), int64 (H, W))``, ``describe(i)``."""

    name: str = ""
    split: str = ""
    class_names: dict[int, str] = {}
    unlabelled_images: int = 0  # images of the split that have no mask (left out)
    first_unlabelled: str = ""  # the first of them

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def label_ids(self) -> set[int]:
        """Every mask value of the split (void values included)."""
        ids: set[int] = set()
        for i in range(len(self)):
            ids.update(np.unique(self.load(i)[1]).tolist())
        return ids


def _train_like_first(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: ("train" not in n.lower(), n))


def resolve_splits(found: Sequence[str], train: str, val: str, where: str) -> tuple[str, str]:
    """``data.train_split`` / ``data.val_split``; ``""`` picks from the two folders found, train-like first."""
    for key, name in (("data.train_split", train), ("data.val_split", val)):
        if name and name not in found:
            raise InfoviewError(
                f"{key}={name}: {where} has no split '{name}'; splits found: {', '.join(found) or 'none'}"
            )
    if train and val:
        return train, val
    rest = [n for n in _train_like_first(found) if n not in (train, val)]
    need = (not train) + (not val)
    if len(found) != 2 or len(rest) < need:
        raise InfoviewError(
            f"{where} has {len(found)} split folder(s) ({', '.join(found) or 'none'}); with other than two, "
            "name them: data.train_split=... data.val_split=..."
        )
    if not train:
        train = rest.pop(0)
    if not val:
        val = rest.pop(0)
    return train, val


def open_segmentation_splits(
    source: str, train_split: str = "", val_split: str = "", size: int = 64, seed: int = 0
) -> tuple[SegmentationSource, SegmentationSource]:
    """The train and val splits of a ``segmentation`` scheme's source string (``masks:...``, ``shapes``).

    ``train_split`` / ``val_split`` name the splits (``""``: the source's default, or the two it has).
    """
    return open_as("segmentation", str(source), train_split=train_split, val_split=val_split, size=size, seed=seed)


class SegmentationSet:
    """A torch dataset over a :class:`SegmentationSource` at a fixed side ``size``.

    Items are ``(image uint8 (3, size, size), mask int64 (size, size))``.
    ``train=True``: random resized crop (area fraction in ``scale``, aspect
    3/4 to 4/3) and a horizontal flip with p = 0.5, the same for image and
    mask. ``train=False``: the whole image resized to ``size`` x ``size``
    (bilinear with antialiasing; masks nearest). ``limit`` keeps the first
    ``limit`` items (0 = all).
    """

    def __init__(self, source: SegmentationSource, size: int, train: bool, scale=(0.25, 1.0), limit: int = 0):
        from torchvision.transforms import v2

        self.source, self.size, self.train = source, int(size), bool(train)
        self.length = len(source) if limit <= 0 else min(int(limit), len(source))
        if self.train:
            self.transform = v2.Compose([
                v2.RandomResizedCrop((self.size, self.size), scale=tuple(scale), antialias=True),
                v2.RandomHorizontalFlip(0.5),
            ])
        else:
            self.transform = v2.Resize((self.size, self.size), antialias=True)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        if not 0 <= index < self.length:
            raise IndexError(index)
        image, mask = self.source.load(index)
        img = tv_tensors.Image(torch.tensor(image, dtype=torch.uint8).permute(2, 0, 1))  # a copy: PIL's is read-only
        msk = tv_tensors.Mask(torch.tensor(mask, dtype=torch.int64)[None])
        img, msk = self.transform(img, msk)
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor)[0].long().contiguous()
