"""Image sources: a string names where images come from; ``open_source`` opens it.

Every source is an indexable dataset of ``(image, label)``: the image an RGB
``uint8`` array of shape (H, W, 3), the label an ``int`` (-1 where there is
none). ``source.describe(i)`` names item ``i`` (a file, or ``digits[12]``) so
that errors can point at it.

The source strings are the schemes registered for the ``images`` kind in
:mod:`infoview.data.registry` (``infoview list sources`` lists them): ``digits``
(the embedded default), ``shapes``, ``cifar10:<root>``, ``cifar100:<root>``,
``stl10:<root>``, ``folder:<path>``, ``coco:<images>:<instances.json>``,
``beton:<file>``; each is one module of :mod:`infoview.data.schemes`.
Nothing is downloaded unless ``download=True`` is passed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from infoview.data.images import read_image
from infoview.data.registry import open_as, resolve
from infoview.errors import InfoviewError


class ImageSource:
    """Base class: an indexable dataset of ``(uint8 HxWx3 array, int label)``."""

    name: str = ""
    split: str | None = None
    classes: list[str] | None = None
    #: (H, W) when every image has it and it is known without decoding, else None
    image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def read_bytes(self, index: int) -> tuple[bytes | None, int]:
        """``(the encoded file's bytes, label)`` without decoding, for sources of files (decode on the device).

        Sources of decoded arrays do not override it; ``bytes`` may be None for
        an item stored decoded (a .beton's raw pixels), which ``load`` then reads.
        """
        raise NotImplementedError(f"{type(self).__name__} holds no encoded files")

    def labels(self) -> np.ndarray:
        """All labels (int64), without decoding images where the source allows."""
        return np.array([self.load(i)[1] for i in range(len(self))], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        labels = self.labels()
        return int(labels.max()) + 1 if len(labels) else 0

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} images)")
        return self.load(index)

    def __repr__(self) -> str:
        split = f", split={self.split}" if self.split else ""
        return f"{type(self).__name__}({self.name!r}{split}, {len(self)} images)"


class ArraySource(ImageSource):
    """Images already in memory as one (N, H, W, 3) uint8 array."""

    def __init__(self, name: str, images: np.ndarray, labels: Sequence[int], classes=None, split=None):
        images = np.ascontiguousarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        self.name, self.split = name, split
        self.images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes) if classes is not None else None
        self.image_size = (int(images.shape[1]), int(images.shape[2]))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self._labels[index])

    def labels(self) -> np.ndarray:
        return self._labels.copy()


class FileListSource(ImageSource):
    """A source backed by a list of image files and their labels (``files``, ``_labels``)."""

    files: list[str]
    _labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return read_image(self.files[index]), int(self._labels[index])

    def read_bytes(self, index: int) -> tuple[bytes, int]:
        try:
            with open(self.files[index], "rb") as f:
                return f.read(), int(self._labels[index])
        except OSError as exc:
            raise InfoviewError(f"cannot read image {self.files[index]}: {exc.strerror or exc}") from None

    def describe(self, index: int) -> str:
        return self.files[index]

    def labels(self) -> np.ndarray:
        return self._labels.copy()


def check_held_out(train: ImageSource, held: ImageSource, hint: str = "") -> None:
    """Refuse held-out data that is the training data, or that names other classes.

    The same source with the same split (a .beton without a record of its
    split, asked for two splits) would score the model on its training
    images; train and held-out splits whose class names differ (a val folder
    laid out as val/images/*.JPEG reads as one class "images") would score it
    against the wrong labels. ``hint`` says how to name other held-out data.
    """
    if train.name == held.name and train.split == held.split:
        raise InfoviewError(
            f"{held.name} has no separate held-out split: it would give the training images again"
            + (f"; {hint}" if hint else "")
        )
    a, b = train.classes, held.classes
    if a and b and list(a) != list(b):
        def show(c):
            return ", ".join(c[:12]) + (f", ... ({len(c)} in all)" if len(c) > 12 else "")

        raise InfoviewError(
            f"the training split ({train.name}, {train.split or 'one split'}) has classes [{show(a)}] but the "
            f"held-out split ({held.name}, {held.split or 'one split'}) has [{show(b)}]; a score against other "
            "class names would be meaningless"
        )


def check_split(source: str, split: str | None, valid: Sequence[str]) -> None:
    """An error naming the valid splits when ``source`` has no split ``split``."""
    if split not in valid:
        raise InfoviewError(f"{source} has no split '{split}'; valid splits: {', '.join(valid)}")


def parse_source(source: str) -> tuple[str, str]:
    """``"folder:/x"`` -> ``("folder", "/x")``; an unknown scheme or a wrong argument count is a ConfigError."""
    scheme, _ = resolve("images", source)
    return scheme.name, source.strip().partition(":")[2]


def open_source(source: str | ImageSource, split: str = "train", download: bool = False) -> ImageSource:
    """Open a source string (an ``images`` scheme of the registry) as an ``ImageSource``."""
    if isinstance(source, ImageSource):
        return source
    return open_as("images", source, split=split or "train", download=download)
