"""``coco:<images>:<instances.json>``: COCO photos and their instances JSON, as images and as detection data.

- ``images``: :class:`CocoSource`, each photo labelled with its most frequent category;
- ``detection``: :class:`CocoDetection`, the boxes and instance masks (see :mod:`infoview.data.detection`).

The split of ``coco:<images>:<json>`` at its last ``:`` is the registry's one
grammar: the image folder may contain ``:``, the annotation file may not.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from infoview.data.detection import DetectionDataset
from infoview.data.images import image_size, read_image
from infoview.data.registry import register_source
from infoview.data.sources import FileListSource
from infoview.errors import InfoviewError

USAGE = "coco:<images folder>:<instances.json>"


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


def coco_contents(images: str, annotations: str) -> tuple[Path, Path, list[dict], list[dict], dict[int, list]]:
    """``(image folder, annotation file, categories by id, images by id, {image id: its annotations})`` of a
    ``coco:<images>:<json>`` source, checked.

    An image without an ``id`` or a ``file_name`` is an error naming it. An annotation whose ``image_id`` is
    not among the images, or whose ``category_id`` is not among the categories, cannot be used: they are left
    out, and counted in one line on stderr (not in silence: they would change what is trained and scored).
    """
    img_root, ann_path, data = read_coco_instances(images, annotations)
    with coco_format_errors(ann_path):
        cats = sorted(data["categories"], key=lambda c: c["id"])
        listed = data["images"]
        for i, im in enumerate(listed):
            missing = [k for k in ("id", "file_name") if not isinstance(im, dict) or im.get(k) in (None, "")]
            if missing:
                raise InfoviewError(
                    f"coco: {ann_path}: image {i} of 'images' ({json.dumps(im)[:80]}) has no "
                    f"{' and no '.join(missing)}; each image needs an id and a file_name")
        images_meta = sorted(listed, key=lambda im: im["id"])
        image_ids, cat_ids = {im["id"] for im in images_meta}, {c["id"] for c in cats}
        per_image: dict[int, list] = {}
        unknown: dict[str, list] = {"image": [], "category": []}
        for a in data.get("annotations") or []:
            a["bbox"] = [float(v) for v in a["bbox"]]
            a["category_id"] = int(a["category_id"])
            if a["image_id"] not in image_ids:
                unknown["image"].append(a["image_id"])
            elif a["category_id"] not in cat_ids:
                unknown["category"].append(a["category_id"])
            else:
                per_image.setdefault(a["image_id"], []).append(a)
    said = [f"{len(ids)} name {what} that is not in '{where}' ({', '.join(map(str, sorted(set(ids), key=str)[:5]))}"
            f"{', ...' if len(set(ids)) > 5 else ''})"
            for what, where, ids in (("an image_id", "images", unknown["image"]),
                                     ("a category_id", "categories", unknown["category"])) if ids]
    if said:
        print(f"infoview: coco: {ann_path}: of its annotations, {' and '.join(said)}; those are left out",
              file=sys.stderr, flush=True)
    return img_root, ann_path, cats, images_meta, per_image


class CocoSource(FileListSource):
    """COCO photos with an instances JSON; image label = the most frequent category.

    Labels are contiguous indices into the sorted category ids (``classes`` has
    the names); an image without annotations gets -1. Ties go to the category
    with the smaller id.
    """

    def __init__(self, images: str, annotations: str):
        self.name = f"coco:{images}:{annotations}"
        img_root, ann_path, cats, images_meta, per_image = coco_contents(images, annotations)
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        files, labels = [], []
        for im in images_meta:
            counts = Counter(a["category_id"] for a in per_image.get(im["id"], []))
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


class CocoDetection(DetectionDataset):
    """COCO photos with their boxes and masks (polygons, RLE); images sorted by id."""

    def __init__(self, images: str, annotations: str):
        name = f"coco:{images}:{annotations}"
        root, ann_path, cats, images_meta, per_image = coco_contents(images, annotations)
        records = [
            {"id": int(im["id"]), "name": str(im["file_name"]), "path": str(root / im["file_name"]),
             "height": im.get("height"), "width": im.get("width"), "anns": per_image.get(im["id"], [])}
            for im in images_meta
        ]
        if not records:
            raise InfoviewError(f"coco: {ann_path} lists no images")
        if not cats:
            raise InfoviewError(f"coco: {ann_path} lists no categories")
        missing = [r for r in records if not os.path.isfile(r["path"])]
        if missing:
            raise InfoviewError(
                f"coco: {ann_path} lists {len(missing)} image(s) (of {len(records)}) that are not in {root}, "
                f"the first {missing[0]['name']}; do the image folder and the annotation file belong together?"
            )
        super().__init__(records, cats, name)

    def _image(self, rec: dict) -> np.ndarray:
        return read_image(rec["path"])

    def _size(self, rec: dict) -> tuple[int, int]:
        if rec.get("height") and rec.get("width"):
            return int(rec["height"]), int(rec["width"])
        return image_size(rec["path"])

    def _annotations(self, rec: dict, hw: tuple[int, int]) -> list[dict]:
        return rec["anns"]


@register_source("coco", kind="images", usage=USAGE,
                 help="COCO photos listed in an instances JSON; label = the most frequent category (-1: none)")
def open_coco_images(images: str, annotations: str) -> CocoSource:
    return CocoSource(images, annotations)


@register_source("coco", kind="detection", usage=USAGE,
                 help="COCO photos with their boxes and instance masks (polygons, RLE); crowd regions kept for "
                      "evaluation only")
def open_coco_detection(images: str, annotations: str) -> CocoDetection:
    return CocoDetection(images, annotations)
