"""``shapes``: procedural circles, squares and triangles (:mod:`infoview.data.shapes`), for every kind of data.

- ``images``: :class:`~infoview.data.shapes.ShapesSource`, 64 px, labelled with the largest shape;
  splits train (2000 images), test and val (500 each);
- ``detection``: :class:`ShapesDetection`, 2000 images of 128 px with boxes and instance masks;
- ``segmentation``: :class:`ShapesSegmentation`, the images at ``size`` px as semantic masks
  (1 = background, 2/3/4 = circle/square/triangle; id 0, void by default, does not occur).

Nothing is read from disk: every image is drawn from a seeded generator.
"""
from __future__ import annotations

import numpy as np

from infoview.data.detection import DetectionDataset, mask_box_xywh
from infoview.data.registry import register_source
from infoview.data.segmentation import SegmentationSource, resolve_splits
from infoview.data.shapes import CLASSES, ShapesSource
from infoview.data.sources import check_split

SHAPES_SIZE = 128  #: detection: image side
SHAPES_IMAGES = 2000  #: detection: images
SHAPES_CLASSES = {0: "void", 1: "background", 2: "circle", 3: "square", 4: "triangle"}  #: segmentation ids
SHAPES_SPLITS = ("train", "val", "test")


class ShapesDetection(DetectionDataset):
    """The training split of ``shapes`` with its boxes and instance masks; category ids 1..3."""

    def __init__(self, num_images: int = SHAPES_IMAGES, size: int = SHAPES_SIZE, seed: int = 0):
        self.source = ShapesSource("train", size=size, num_images=num_images, seed=seed)
        records = [{"id": i + 1, "name": f"shapes[{i}]", "index": i, "height": size, "width": size}
                   for i in range(num_images)]
        super().__init__(records, [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)], "shapes")

    def _image(self, rec: dict) -> np.ndarray:
        return self.source.sample(rec["index"])[0]

    def _annotations(self, rec: dict, hw: tuple[int, int]) -> list[dict]:
        t = self.source.targets(rec["index"])
        return [
            {"category_id": int(label) + 1, "bbox": mask_box_xywh(mask), "iscrowd": 0,
             "area": float(mask.sum()), "mask": mask}
            for mask, label in zip(t["masks"], t["labels"])
        ]


class ShapesSegmentation(SegmentationSource):
    """``shapes`` as semantic masks: 1 = background, 2/3/4 = circle/square/triangle."""

    def __init__(self, split: str = "train", size: int = 64, num_images: int | None = None, seed: int = 0):
        check_split("shapes", split, SHAPES_SPLITS)
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


@register_source("shapes", kind="images", usage="shapes",
                 help="procedural circles, squares and triangles, 64 px, labelled with the largest shape; "
                      "splits train (2000), test, val (500 each)")
def open_shapes_images(*, split: str = "train") -> ShapesSource:
    return ShapesSource(split=split)


@register_source("shapes", kind="detection", usage="shapes",
                 help=f"the same shapes, {SHAPES_IMAGES} images of {SHAPES_SIZE} px, with boxes and instance masks")
def open_shapes_detection() -> ShapesDetection:
    return ShapesDetection()


@register_source("shapes", kind="segmentation", usage="shapes",
                 help="the same shapes at data.size px as masks: 1 = background, 2/3/4 = circle/square/triangle; "
                      "splits train, val, test")
def open_shapes_segmentation(*, train_split: str = "", val_split: str = "", size: int = 64,
                             seed: int = 0) -> tuple[ShapesSegmentation, ShapesSegmentation]:
    train, val = resolve_splits(SHAPES_SPLITS, train_split or "train", val_split or "val", "shapes")
    return ShapesSegmentation(train, size, seed=seed), ShapesSegmentation(val, size, seed=seed)
