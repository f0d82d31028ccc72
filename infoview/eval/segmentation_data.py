"""Semantic-segmentation data for ``infoview segment``: ``masks:<images>:<masks>`` and ``shapes``.

A segmentation source yields ``(image, mask)`` pairs: the image an RGB
``uint8`` array (H, W, 3), the mask an ``int64`` array (H, W) of class ids.

``masks:<root>`` (one root)
    The layout of CamVid and other road-scene sets: each split's images in a
    folder and its masks in a sibling folder of the same name plus ``annot``
    (``train/`` beside ``trainannot/``, ``val/`` beside ``valannot/``).

``masks:<images_root>:<masks_root>``
    Each root holds one folder per split (``images/train2017/*.jpg`` beside
    ``masks/train2017/*.png``, as ``../shared/data/coco128`` does). An image
    and its mask pair up by file stem. Masks are single-channel PNGs (any
    integer mode; palette PNGs give their indices) of the image's size.
    Images without a mask are unlabelled and left out (coco128 has masks for
    100 of its 128 images per split; the counts are reported); a mask without
    an image, two files with one stem, a split with no pair at all and a mask
    of another size than its image are errors that name the file.
    Class names come from a ``config.yaml`` with a ``classes:`` mapping
    (id -> name) in the masks root or its parent, as coco128 ships, when there
    is one.

``shapes``
    :class:`~infoview.data.shapes.ShapesSource` drawn at ``size`` pixels, as
    semantic masks: 1 = background, 2 = circle, 3 = square, 4 = triangle; id 0
    (void by default) does not occur. Splits ``train``, ``val``, ``test``.

:class:`SegmentationSet` turns either into tensors of one fixed side for
training (random resized crop + horizontal flip of image and mask together,
``torchvision.transforms.v2``; masks are resampled with nearest neighbour) or
evaluation (a resize of the whole image to ``size`` x ``size``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from infoview.errors import InfoviewError

#: mask value that is void whatever ``ignore_index`` says (the PASCAL VOC convention)
VOID = 255
SHAPES_CLASSES = {0: "void", 1: "background", 2: "circle", 3: "square", 4: "triangle"}
SHAPES_SPLITS = ("train", "val", "test")
SOURCE_HELP = "masks:<images_root>:<masks_root>, masks:<root> (train/ beside trainannot/) or shapes"
ANNOT = "annot"  #: masks:<root>: a split's masks are in <split>annot/
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
_MASK_EXT = (".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


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


# --------------------------------------------------------------------------- masks:<images>:<masks>


def _split_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _by_stem(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or not entry.lower().endswith(tuple(extensions)):
            continue
        stem = os.path.splitext(entry)[0]
        if stem in files:
            raise InfoviewError(
                f"{what} folder {folder} holds two files with the stem '{stem}' ({files[stem].name}, {entry}); "
                "images and masks pair up by stem, so each stem may appear once"
            )
        files[stem] = folder / entry
    return files


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


def _read_class_names(masks_root: Path) -> dict[int, str]:
    import yaml

    for folder in (masks_root, masks_root.parent):
        path = folder / "config.yaml"
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        classes = data.get("classes") if isinstance(data, dict) else None
        if isinstance(classes, dict):
            try:
                return {int(k): str(v) for k, v in classes.items()}
            except (TypeError, ValueError):
                continue
    return {}


def load_mask_file(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-channel mask to int64 (H, W); errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise InfoviewError(
                    f"mask {path} has mode {im.mode}; expected a single-channel image of class ids "
                    "(mode L, P, I or I;16)"
                )
            arr = np.asarray(im)
    except InfoviewError:
        raise
    except FileNotFoundError:
        raise InfoviewError(f"mask file {path} does not exist") from None
    except Exception as exc:  # PIL raises many types
        raise InfoviewError(f"cannot read mask {path}: {type(exc).__name__}: {exc}") from None
    if arr.ndim != 2:
        raise InfoviewError(f"mask {path} decoded to shape {arr.shape}; expected (H, W) class ids")
    return arr.astype(np.int64)


class MaskFolderSplit(SegmentationSource):
    """One split of ``masks:<images_root>:<masks_root>``: the images of ``images_root/split`` that have a mask."""

    def __init__(self, images_root: str | os.PathLike, masks_root: str | os.PathLike, split: str,
                 mask_suffix: str = ""):
        self.images_root, self.masks_root = Path(images_root), Path(masks_root)
        self.split = split
        self.name = f"masks:{images_root}" if mask_suffix else f"masks:{images_root}:{masks_root}"
        img_dir, mask_dir = self.images_root / split, self.masks_root / (split + mask_suffix)
        for folder, key in ((img_dir, "images"), (mask_dir, "masks")):
            if not folder.is_dir():
                root = self.images_root if key == "images" else self.masks_root
                raise InfoviewError(
                    f"{self.name}: no split '{split}' in the {key} root ({folder} is missing); "
                    f"splits found there: {', '.join(_split_dirs(root)) or 'none'}"
                )
        images = _by_stem(img_dir, _IMAGE_EXT, "image")
        masks = _by_stem(mask_dir, _MASK_EXT, "mask")
        orphans = [s for s in masks if s not in images]
        unmasked = [s for s in images if s not in masks]
        if orphans:
            raise InfoviewError(
                f"{self.name} split '{split}': mask {masks[orphans[0]]} has no image with the stem "
                f"'{orphans[0]}' in {img_dir} ({len(orphans)} mask(s) without an image); images and masks "
                "pair up by file stem"
            )
        if not masks:
            first = f"; the first image without a mask is {images[unmasked[0]]}" if unmasked else ""
            raise InfoviewError(
                f"{self.name} split '{split}': no image pairs with a mask (looked for masks named like the "
                f"images, {', '.join(_MASK_EXT)}, in {mask_dir}){first}"
            )
        stems = sorted(masks)
        self.images = [str(images[s]) for s in stems]
        self.masks = [str(masks[s]) for s in stems]
        self.unlabelled_images = len(unmasked)
        self.first_unlabelled = str(images[unmasked[0]]) if unmasked else ""
        self.class_names = _read_class_names(self.masks_root)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return self.images[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from infoview.data.sources import load_image_file

        image = load_image_file(self.images[index])
        mask = load_mask_file(self.masks[index])
        if mask.shape != image.shape[:2]:
            raise self._size_error(index, image.shape[:2], mask.shape)
        return image, mask

    def _size_error(self, index, image_hw, mask_hw) -> InfoviewError:
        return InfoviewError(
            f"mask {self.masks[index]} is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {self.images[index]} is "
            f"{image_hw[1]}x{image_hw[0]}; a mask must have its image's size"
        )

    def label_ids(self) -> set[int]:
        """Mask values of the whole split; checks each image's size (header only) on the way."""
        from PIL import Image

        ids: set[int] = set()
        for i in range(len(self)):
            mask = load_mask_file(self.masks[i])
            try:
                with Image.open(self.images[i]) as im:
                    w, h = im.size
            except Exception as exc:
                raise InfoviewError(f"cannot read image {self.images[i]}: {type(exc).__name__}: {exc}") from None
            if mask.shape != (h, w):
                raise self._size_error(i, (h, w), mask.shape)
            ids.update(np.unique(mask).tolist())
        return ids


def mask_splits(images_root: str, masks_root: str) -> list[str]:
    """Split folders found in both roots (errors name a missing or empty root)."""
    found = []
    for key, root in (("images", images_root), ("masks", masks_root)):
        path = Path(root).expanduser()
        if not root:
            raise InfoviewError(f"masks source: give both roots, as {SOURCE_HELP.split(' or ')[0]}")
        if not path.is_dir():
            raise InfoviewError(f"masks source: the {key} root {path} is not a folder")
        found.append(set(_split_dirs(path)))
    return sorted(found[0] & found[1])


# --------------------------------------------------------------------------- shapes


class ShapesSegmentation(SegmentationSource):
    """``shapes`` as semantic masks: 1 = background, 2/3/4 = circle/square/triangle."""

    def __init__(self, split: str = "train", size: int = 64, num_images: int | None = None, seed: int = 0):
        from infoview.data.shapes import ShapesSource

        if split not in SHAPES_SPLITS:
            raise InfoviewError(f"shapes has no split '{split}'; valid splits: {', '.join(SHAPES_SPLITS)}")
        self.source = ShapesSource(split=split, size=size, num_images=num_images, seed=seed)
        self.name, self.split = "shapes", split
        self.class_names = dict(SHAPES_CLASSES)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, target = self.source.sample(index)
        mask = np.ones(image.shape[:2], dtype=np.int64)
        for m, label in zip(target["masks"], target["labels"]):
            mask[m] = int(label) + 2
        return image, mask

    def label_ids(self) -> set[int]:
        return set(range(1, len(SHAPES_CLASSES)))


# --------------------------------------------------------------------------- opening


def _annot_splits(root: str, train_split: str, val_split: str) -> tuple[SegmentationSource, SegmentationSource]:
    """``masks:<root>`` where each split folder X has its masks in a sibling Xannot/."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InfoviewError(f"masks:{root}: {path} is not a folder")
    folders = _split_dirs(path)
    found = [d for d in folders if not d.endswith(ANNOT) and d + ANNOT in folders]
    if not found:
        raise InfoviewError(
            f"masks:{root}: no split folder has its masks beside it as <split>{ANNOT}/ (folders: "
            f"{', '.join(folders) or 'none'}); for one root of images and one of masks, each with a folder per "
            "split, write masks:<images_root>:<masks_root>"
        )
    train, val = resolve_splits(found, train_split, val_split, f"masks:{root}")
    return (MaskFolderSplit(path, path, train, mask_suffix=ANNOT), MaskFolderSplit(path, path, val, mask_suffix=ANNOT))


def open_segmentation_splits(
    source: str, train_split: str = "", val_split: str = "", size: int = 64, seed: int = 0
) -> tuple[SegmentationSource, SegmentationSource]:
    """The train and val splits of a source string (``masks:<images>:<masks>`` or ``shapes``)."""
    source = str(source).strip()
    scheme, _, rest = source.partition(":")
    if scheme == "shapes":
        if rest:
            raise InfoviewError(f"'shapes' takes no argument, got '{source}'")
        train, val = resolve_splits(SHAPES_SPLITS, train_split or "train", val_split or "val", "shapes")
        return ShapesSegmentation(train, size, seed=seed), ShapesSegmentation(val, size, seed=seed)
    if scheme == "masks" and rest and ":" not in rest:
        return _annot_splits(rest, train_split, val_split)
    if scheme == "masks":
        images_root, sep, masks_root = rest.partition(":")
        if not sep or not images_root or not masks_root:
            raise InfoviewError(f"data.source '{source}' must be {SOURCE_HELP.split(' or ')[0]}")
        found = mask_splits(images_root, masks_root)
        for key, name in (("data.train_split", train_split), ("data.val_split", val_split)):
            for what, root in (("images", images_root), ("masks", masks_root)):
                there = _split_dirs(Path(root).expanduser())
                if name and name not in there:
                    raise InfoviewError(
                        f"{key}={name}: no split '{name}' in the {what} root {root}; splits found there: "
                        f"{', '.join(there) or 'none'}"
                    )
        train, val = resolve_splits(found, train_split, val_split, f"masks:{images_root}:{masks_root}")
        return MaskFolderSplit(images_root, masks_root, train), MaskFolderSplit(images_root, masks_root, val)
    hint = ""
    if scheme in ("coco", "folder", "digits", "cifar10", "cifar100", "stl10", "beton"):
        hint = f" ('{scheme}' has no per-pixel labels)"
    raise InfoviewError(f"unknown segmentation source '{source}'{hint}; expected {SOURCE_HELP}")


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
        import torch
        from torchvision import tv_tensors

        if not 0 <= index < self.length:
            raise IndexError(index)
        image, mask = self.source.load(index)
        img = tv_tensors.Image(torch.tensor(image, dtype=torch.uint8).permute(2, 0, 1))  # a copy: PIL's is read-only
        msk = tv_tensors.Mask(torch.tensor(mask, dtype=torch.int64)[None])
        img, msk = self.transform(img, msk)
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor)[0].long().contiguous()
