"""Datasets for ``infoview detect``: images with boxes and instance masks, and COCO ground truth.

Every source of the ``detection`` kind (:mod:`infoview.data.registry`), one
contract. ``open_detection_source(source)`` returns a
:class:`DetectionDataset`; ``dataset.split(holdout)`` cuts off the last
``holdout`` images for evaluation; an item is what torchvision's detection
models take::

    image   float32 (3, H, W) in [0, 1], any H and W (the model resizes)
    target  {"boxes": (K, 4) float32 x1 y1 x2 y2 in pixels, "labels": (K,) int64 in 1..C,
             "masks": (K, H, W) uint8 (with masks on), "image_id": int}

and ``dataset.coco_gt()`` is a pycocotools ``COCO`` object holding the same
images' ground truth, as COCOeval expects it.

=========================================  =============================================
``coco:<images>:<instances.json>``         COCO instances JSON (polygon and RLE masks);
                                           images sorted by id (``schemes/coco.py``)
``pennfudan:<root>``                       Penn-Fudan: ``PNGImages/*.png`` and
                                           ``PedMasks/*_mask.png`` (0 = background,
                                           k = k-th pedestrian); one category, person;
                                           images sorted by file name (``schemes/pennfudan.py``)
``shapes``                                 procedural circles, squares and triangles
                                           (``infoview.data.shapes``), 128 px, 2000 images
                                           (``schemes/shapes.py``)
=========================================  =============================================

What is handled, and how:

- crowd annotations (``iscrowd=1``) are left out of the training targets and
  kept in the evaluation ground truth, where COCOeval ignores detections that
  fall on them (the COCO protocol);
- images without annotations are kept: they train the detector on background,
  and in evaluation every detection on them is a false positive;
- images are read with :func:`infoview.data.images.read_image` (grayscale,
  palette, RGBA and 16-bit images become 8-bit RGB); images keep their size;
- boxes are clipped to the image; boxes left empty are dropped from training
  targets; an annotation without a segmentation gets its box as its mask;
- an annotation file that lists images that are not there is an
  :class:`InfoviewError` naming the first missing file and how many are
  missing, raised when the source is opened, so before any training; so is an
  image whose size differs from the one the JSON gives (its polygons would not
  fit it), when that image is read;
- a COCO image without ``id`` or ``file_name`` is an error naming it; annotations of an image or a category
  the file does not list are left out, counted in one line on stderr (``schemes/coco.py``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from infoview.data.registry import open_as
from infoview.errors import InfoviewError


# --------------------------------------------------------------------------- masks and COCO helpers


def mask_to_rle(mask: np.ndarray) -> dict:
    """A (H, W) bool mask as COCO's compressed RLE, with ``counts`` as text (JSON-able)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def segmentation_to_mask(seg: Any, box_xywh: Sequence[float], height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) as an (H, W) bool mask.

    An annotation without a usable segmentation gets its box as its mask.
    """
    from pycocotools import mask as mask_utils

    rle = None
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6]
        if polys:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", [])) != [height, width]:
            raise InfoviewError(f"an RLE mask of size {seg.get('size')} belongs to an image of size {[height, width]}")
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            counts = seg["counts"]
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if rle is not None:
        with warnings.catch_warnings():  # pycocotools' own numpy-2 DeprecationWarning, on every decode
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    mask = np.zeros((height, width), dtype=bool)
    x, y, w, h = box_xywh
    x1, y1 = int(np.floor(max(x, 0))), int(np.floor(max(y, 0)))
    x2, y2 = int(np.ceil(min(x + w, width))), int(np.ceil(min(y + h, height)))
    mask[y1:y2, x1:x2] = True
    return mask


def mask_box_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    return [x1, y1, x2 - x1, y2 - y1]


def quiet_coco(dataset: dict):
    """A pycocotools ``COCO`` over an in-memory dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------- the dataset


class DetectionDataset(torch.utils.data.Dataset):
    """Records of images and their COCO-style annotations; subclasses say how to read them.

    A record is a dict with at least ``id`` (the COCO image id) and ``name``
    (for messages), and ``height`` / ``width`` where they are known without
    reading the image. Subclasses implement ``_image(rec)`` (uint8 RGB array),
    ``_annotations(rec, hw)`` (dicts with ``category_id``, ``bbox`` (x, y, w, h),
    ``iscrowd``, ``area`` and either ``segmentation`` or a bool ``mask`` array)
    and, where it is cheaper than decoding, ``_size(rec)``.
    """

    def __init__(self, records: list[dict], categories: list[dict], name: str):
        self.records = records
        self.categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]
        self.name = name
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}  # 0 = background
        self.label_to_cat = [0] + [c["id"] for c in self.categories]
        self.masks = True  # targets carry instance masks
        self.flip = 0.0  # probability of a horizontal flip (training)
        self.targets = True  # False: the target is only {"image_id"} (inference)

    # ---- views

    def subset(self, indices: Sequence[int]) -> "DetectionDataset":
        view = copy.copy(self)
        view.records = [self.records[i] for i in indices]
        return view

    def split(self, holdout: int) -> tuple["DetectionDataset", "DetectionDataset"]:
        """(all but the last ``holdout`` images, the last ``holdout`` images)."""
        n = len(self)
        if holdout < 1 or holdout >= n:
            raise InfoviewError(
                f"data.holdout={holdout} for {self.name}, which has {n} images: hold out between 1 and {n - 1} "
                "images for evaluation (or give data.val_source)"
            )
        return self.subset(range(n - holdout)), self.subset(range(n - holdout, n))

    def configure(self, *, masks: bool | None = None, flip: float | None = None,
                  targets: bool | None = None) -> "DetectionDataset":
        view = copy.copy(self)
        if masks is not None:
            view.masks = bool(masks)
        if flip is not None:
            view.flip = float(flip)
        if targets is not None:
            view.targets = bool(targets)
        return view

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """Categories plus background."""
        return len(self.categories) + 1

    @property
    def image_ids(self) -> list[int]:
        return [int(r["id"]) for r in self.records]

    # ---- what subclasses provide

    def _image(self, rec: dict) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _annotations(self, rec: dict, hw: tuple[int, int]) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _size(self, rec: dict) -> tuple[int, int]:
        """(H, W) of a record, from the record or else from the image."""
        if rec.get("height") and rec.get("width"):
            return int(rec["height"]), int(rec["width"])
        return self._image(rec).shape[:2]

    # ---- items

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        rec = self.records[index]
        image = self._image(rec)
        h, w = image.shape[:2]
        if rec.get("height") and rec.get("width") and (int(rec["height"]), int(rec["width"])) != (h, w):
            raise InfoviewError(
                f"{self.name}: image {rec['name']} is {w}x{h} pixels but its annotation says "
                f"{rec['width']}x{rec['height']}; do the image folder and the annotation file belong together?"
            )
        target: dict[str, Any] = {"image_id": int(rec["id"])}
        if self.targets:
            target.update(self._target(rec, (h, w)))
        flip = self.flip > 0 and float(torch.rand(())) < self.flip
        if flip:
            image = image[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if flip and self.targets:
            boxes = target["boxes"]
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return tensor, target

    def _target(self, rec: dict, hw: tuple[int, int]) -> dict:
        h, w = hw
        boxes, labels, masks = [], [], []
        for ann in self._annotations(rec, hw):
            if ann.get("iscrowd", 0) or ann["category_id"] not in self.cat_to_label:
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                continue  # empty after clipping: torchvision rejects such boxes
            boxes.append([x1, y1, x2, y2])
            labels.append(self.cat_to_label[ann["category_id"]])
            if self.masks:
                mask = ann.get("mask")
                if mask is None:
                    try:
                        mask = segmentation_to_mask(ann.get("segmentation"), ann["bbox"], h, w)
                    except InfoviewError as exc:
                        raise InfoviewError(f"{self.name}: image {rec['name']}: {exc}") from None
                masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        if self.masks:
            target["masks"] = (
                torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
            )
        return target

    # ---- evaluation ground truth

    def coco_gt(self):
        """These images' ground truth as a pycocotools COCO object (crowd annotations included)."""
        images, annotations = [], []
        for rec in self.records:
            h, w = self._size(rec)
            images.append({"id": int(rec["id"]), "height": h, "width": w, "file_name": rec["name"]})
            for ann in self._annotations(rec, (h, w)):
                if ann["category_id"] not in self.cat_to_label:
                    continue
                out = {k: ann[k] for k in ("category_id", "bbox", "iscrowd", "area", "segmentation") if k in ann}
                if ann.get("mask") is not None:
                    out["segmentation"] = mask_to_rle(ann["mask"])
                    out.setdefault("area", float(ann["mask"].sum()))
                if not out.get("segmentation"):  # box-only annotation: its box is its mask
                    x, y, bw, bh = ann["bbox"]
                    out["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                out.setdefault("iscrowd", 0)
                out.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
                out["image_id"] = int(rec["id"])
                out["id"] = len(annotations) + 1  # COCOeval counts id 0 as "unmatched"
                annotations.append(out)
        return quiet_coco({"images": images, "annotations": annotations, "categories": copy.deepcopy(self.categories)})


# --------------------------------------------------------------------------- opening a source


def open_detection_source(source: str) -> DetectionDataset:
    """A ``detection`` scheme's source string (``coco:<images>:<json>``, ``pennfudan:<root>``, ``shapes``)."""
    return open_as("detection", source)


def collate(batch):
    """A batch of (image, target) pairs as (list of images, list of targets): sizes differ."""
    images, targets = zip(*batch)
    return list(images), list(targets)
