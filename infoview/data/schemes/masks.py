"""``masks:<images_root>:<masks_root>`` and ``masks:<root>``: images and their masks of class ids, for segmentation.

``masks:<root>`` (one root)
    The layout of CamVid and other road-scene sets: each split's images in a
    folder and its masks in a sibling folder of the same name plus ``annot``
    (``train/`` beside ``trainannot/``).

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

With two roots, the split at the last ``:`` is the registry's one grammar:
the images root may contain ``:``, the masks root may not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from infoview.config import load_yaml
from infoview.data.images import image_size, load_mask_file, read_image
from infoview.data.registry import register_source
from infoview.data.segmentation import SegmentationSource, resolve_splits
from infoview.errors import InfoviewError

TWO_ROOTS = "masks:<images_root>:<masks_root>"
ANNOT = "annot"  #: masks:<root>: a split's masks are in <split>annot/
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
_MASK_EXT = (".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


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


def _read_class_names(masks_root: Path) -> dict[int, str]:
    for folder in (masks_root, masks_root.parent):
        path = folder / "config.yaml"
        if not path.is_file():
            continue
        try:
            data = load_yaml(path.read_text(encoding="utf-8"), str(path))  # an alias bomb is an error
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        classes = data.get("classes") if isinstance(data, dict) else None
        if isinstance(classes, dict):
            try:
                return {int(k): str(v) for k, v in classes.items()}
            except (TypeError, ValueError):
                continue
    return {}


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
        image = read_image(self.images[index])
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
        ids: set[int] = set()
        for i in range(len(self)):
            mask = load_mask_file(self.masks[i])
            h, w = image_size(self.images[i])
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
            raise InfoviewError(f"masks source: give both roots, as {TWO_ROOTS}")
        if not path.is_dir():
            raise InfoviewError(f"masks source: the {key} root {path} is not a folder")
        found.append(set(_split_dirs(path)))
    return sorted(found[0] & found[1])


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


def _two_roots(images_root: str, masks_root: str, train_split: str, val_split: str):
    """``masks:<images_root>:<masks_root>``: one folder per split in each root."""
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


@register_source("masks", kind="segmentation", usage=f"{TWO_ROOTS} or masks:<root>",
                 help="images and single-channel masks of class ids paired by file stem, one folder per split "
                      f"in each root; with one root, each split <split>/ beside <split>{ANNOT}/")
def open_masks(root: str, masks_root: str = "", *, train_split: str = "", val_split: str = ""):
    if not masks_root:
        return _annot_splits(root, train_split, val_split)
    return _two_roots(root, masks_root, train_split, val_split)
