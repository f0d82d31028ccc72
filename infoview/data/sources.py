"""Image sources: a string names where images come from; ``open_source`` opens it.

Every source is an indexable dataset of ``(image, label)``: the image an RGB
``uint8`` array of shape (H, W, 3), the label an ``int`` (-1 where there is
none). ``source.describe(i)`` names item ``i`` (a file, or ``digits[12]``) so
that errors can point at it.

=====================================  ==========================================
source string                          what it reads
=====================================  ==========================================
``digits``                             scikit-learn's 1797 8x8 digits, as 32x32 RGB
                                       (the embedded default; last 20% = test)
``shapes``                             procedural circles/squares/triangles with
                                       boxes and instance masks (``ShapesSource``)
``cifar10:<root>``                     torchvision's CIFAR-10 files under root
``cifar100:<root>``                    torchvision's CIFAR-100 files under root
``stl10:<root>``                       torchvision's STL-10 files under root
``folder:<path>``                      one subfolder per class; ``train/``,
                                       ``test/``, ``val/`` inside pick the split
``coco:<images>:<instances.json>``     COCO photos; label = most frequent category
``beton:<file>``                       an ffcv file written by ``infoview prepare``
=====================================  ==========================================

Nothing is downloaded unless ``download=True`` is passed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from infoview.errors import InfoviewError

SCHEMES = ("digits", "shapes", "cifar10", "cifar100", "stl10", "folder", "coco", "beton")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SOURCE_HELP = (
    "digits, shapes, cifar10:<root>, cifar100:<root>, stl10:<root>, folder:<path>, "
    "coco:<images>:<instances.json>, beton:<file>"
)


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


# --------------------------------------------------------------------------- digits

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # ink in [0, 1]
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    images = x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()  # white ink on black
    return images, digits.target.astype(np.int64)


def digits_source(split: str = "train") -> ArraySource:
    """scikit-learn's digits as 32x32 RGB; the last 20% (360 images) are the test split."""
    _check_split("digits", split, ("train", "test"))
    images, labels = _digits_arrays()
    n_train = len(images) - int(math.ceil(len(images) * DIGITS_TEST_FRACTION))
    sl = slice(0, n_train) if split == "train" else slice(n_train, None)
    return ArraySource("digits", images[sl], labels[sl], [str(d) for d in range(10)], split)


# --------------------------------------------------------------------------- torchvision files


def _torchvision_source(kind: str, root: str, split: str, download: bool) -> ArraySource:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[kind]
    splits = ("train", "test", "unlabeled", "train+unlabeled") if kind == "stl10" else ("train", "test")
    _check_split(kind, split, splits)
    if not root:
        raise InfoviewError(f"{kind}: give the folder that holds the files, as {kind}:<root>")
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


# --------------------------------------------------------------------------- folders of files


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def load_image_file(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to RGB uint8 (H, W, 3); errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InfoviewError(f"image file {path} does not exist") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise InfoviewError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InfoviewError(f"cannot read image {path}: decoded to shape {arr.shape}")
    return arr


class FileListSource(ImageSource):
    """A source backed by a list of image files and their labels (``files``, ``_labels``)."""

    files: list[str]
    _labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return load_image_file(self.files[index]), int(self._labels[index])

    def describe(self, index: int) -> str:
        return self.files[index]

    def labels(self) -> np.ndarray:
        return self._labels.copy()


class FolderSource(FileListSource):
    """ImageFolder layout: ``<root>/<class>/**/<image>``; classes sorted by name.

    When the folder holds ``train/``, ``test/`` or ``val/`` subfolders (and only
    those), ``split`` picks one; otherwise the folder is the data, and asking
    for a ``test`` or ``val`` split is an error rather than a silent reuse.
    """

    SPLITS = ("train", "test", "val")

    def __init__(self, path: str, split: str = "train"):
        self.name = f"folder:{path}"
        root = Path(path).expanduser()
        if not path:
            raise InfoviewError("folder: give a path, as folder:<path>")
        if not root.exists():
            raise InfoviewError(f"folder {root} does not exist")
        if not root.is_dir():
            raise InfoviewError(f"folder:{path}: {root} is a file, expected a folder with one subfolder per class")
        subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        split_dirs = [d for d in subdirs if d in self.SPLITS]
        if split_dirs and len(split_dirs) == len(subdirs):
            if split not in split_dirs:
                raise InfoviewError(
                    f"folder {root} has no '{split}' split; it has: {', '.join(split_dirs)}"
                )
            root = root / split
            subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        elif split not in (None, "train"):
            raise InfoviewError(
                f"folder {root} has no train/test/val subfolders, so it has no '{split}' split; "
                "it is all one split (split=train)"
            )
        else:
            split = None  # one split: the folder itself
        self.root, self.split = root, split
        if not subdirs:
            loose = [f.name for f in root.iterdir() if f.is_file() and _is_image(f.name)]
            if loose:
                raise InfoviewError(
                    f"folder {root} holds images directly ({loose[0]}, ...); expected one subfolder "
                    "per class (<root>/<class>/<image>)"
                )
            raise InfoviewError(f"folder {root} is empty: expected one subfolder per class with images in it")
        files: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(subdirs):
            found = []
            for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
            if not found:
                raise InfoviewError(
                    f"class folder {root / cls} has no images (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
                )
            files += found
            labels += [label] * len(found)
        self.files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        self.classes = subdirs

def read_coco_instances(images: str, annotations: str) -> tuple[Path, Path, dict]:
    """(image folder, annotation file, parsed JSON) of a ``coco:<images>:<json>`` source; errors name the file."""
    img_root, ann_path = Path(images).expanduser(), Path(annotations).expanduser()
    if not img_root.is_dir():
        raise InfoviewError(f"coco: image folder {img_root} does not exist")
    if not ann_path.is_file():
        raise InfoviewError(f"coco: annotation file {ann_path} does not exist")
    with coco_format_errors(ann_path):
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"the file holds a {type(data).__name__}, not an object")
    return img_root, ann_path, data


@contextlib.contextmanager
def coco_format_errors(ann_path: Path):
    """Turn a malformed COCO file (missing or mistyped fields) into an error that names it."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InfoviewError(
            f"coco: {ann_path} is not a COCO instances file ({type(exc).__name__}: {exc}); "
            "expected 'images' (id, file_name), 'annotations' (image_id, category_id, bbox) and 'categories'"
        ) from None


class CocoSource(FileListSource):
    """COCO photos with an instances JSON; image label = the most frequent category.

    Labels are contiguous indices into the sorted category ids (``classes`` has
    the names); an image without annotations gets -1. Ties go to the category
    with the smaller id.
    """

    def __init__(self, images: str, annotations: str):
        self.name = f"coco:{images}:{annotations}"
        img_root, ann_path, data = read_coco_instances(images, annotations)
        with coco_format_errors(ann_path):
            cats = sorted(data["categories"], key=lambda c: c["id"])
            images_meta = sorted(data["images"], key=lambda im: im["id"])
            anns = data.get("annotations", [])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        per_image: dict[int, Counter] = {}
        for a in anns:
            if a.get("category_id") in cat_index:
                per_image.setdefault(a["image_id"], Counter())[a["category_id"]] += 1
        files, labels = [], []
        for im in images_meta:
            counts = per_image.get(im["id"])
            if counts:
                best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
                labels.append(cat_index[best])
            else:
                labels.append(-1)
            files.append(str(img_root / im["file_name"]))
        if not files:
            raise InfoviewError(f"coco: {ann_path} lists no images")
        if not os.path.exists(files[0]):
            raise InfoviewError(
                f"coco: {ann_path} lists {images_meta[0]['file_name']}, which is not in {img_root}; "
                "do the image folder and the annotation file belong together?"
            )
        self.files, self._labels = files, np.asarray(labels, dtype=np.int64)
        self.classes = [c.get("name", str(c["id"])) for c in cats]
        self.image_ids = [im["id"] for im in images_meta]


# --------------------------------------------------------------------------- parsing


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


def _check_split(kind: str, split: str | None, valid: Sequence[str]) -> None:
    if split not in valid:
        raise InfoviewError(f"{kind} has no split '{split}'; valid splits: {', '.join(valid)}")


def parse_source(source: str) -> tuple[str, str]:
    """``"folder:/x"`` -> ``("folder", "/x")``; an unknown scheme is an InfoviewError."""
    if not isinstance(source, str) or not source.strip():
        raise InfoviewError(f"empty data source; expected one of: {SOURCE_HELP}")
    scheme, _, rest = source.strip().partition(":")
    if scheme not in SCHEMES:
        hint = ""
        if source.endswith(".beton"):
            hint = f" (did you mean beton:{source}?)"
        elif os.path.isdir(source):
            hint = f" (did you mean folder:{source}?)"
        raise InfoviewError(f"unknown data source '{source}'{hint}; expected one of: {SOURCE_HELP}")
    if scheme in ("digits", "shapes") and rest:
        raise InfoviewError(f"'{scheme}' takes no argument, got '{source}'")
    return scheme, rest


def open_source(source: str | ImageSource, split: str = "train", download: bool = False) -> ImageSource:
    """Open a source string (see the module docstring) as an ``ImageSource``."""
    if isinstance(source, ImageSource):
        return source
    scheme, rest = parse_source(source)
    split = split or "train"
    if scheme == "digits":
        return digits_source(split)
    if scheme == "shapes":
        from infoview.data.shapes import ShapesSource

        return ShapesSource(split=split)
    if scheme in ("cifar10", "cifar100", "stl10"):
        return _torchvision_source(scheme, rest, split, download)
    if scheme == "folder":
        return FolderSource(rest, split)
    if scheme == "coco":
        images, sep, ann = rest.rpartition(":")
        if not sep or not images or not ann:
            raise InfoviewError(f"coco source '{source}' must be coco:<images folder>:<instances.json>")
        return CocoSource(images, ann)
    if scheme == "beton":
        from infoview.data.beton import BetonSource

        if not rest:
            raise InfoviewError("beton: give a file, as beton:<file>")
        return BetonSource(rest, split)
    raise AssertionError(scheme)  # pragma: no cover
