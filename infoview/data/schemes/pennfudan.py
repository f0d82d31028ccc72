"""``pennfudan:<root>``: the Penn-Fudan pedestrians, as detection data.

``<root>/PNGImages/*.png`` and ``<root>/PedMasks/*_mask.png`` (0 = background,
k = the k-th pedestrian); one category, person; images sorted by file name.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from infoview.data.detection import DetectionDataset, mask_box_xywh
from infoview.data.images import image_size, read_image
from infoview.data.registry import register_source
from infoview.errors import InfoviewError


class PennFudanDetection(DetectionDataset):
    """Penn-Fudan pedestrians: one category, person; images sorted by file name."""

    def __init__(self, root: str):
        base = Path(root).expanduser()
        images_dir, masks_dir = base / "PNGImages", base / "PedMasks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise InfoviewError(
                    f"pennfudan: {d} does not exist; expected the Penn-Fudan layout <root>/PNGImages/*.png "
                    "and <root>/PedMasks/*_mask.png"
                )
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise InfoviewError(f"pennfudan: no .png images in {images_dir}")
        records = [
            {"id": i + 1, "name": p.name, "path": str(p), "mask": str(masks_dir / f"{p.stem}_mask.png")}
            for i, p in enumerate(files)
        ]
        missing = [r for r in records if not os.path.isfile(r["mask"])]
        if missing:
            raise InfoviewError(
                f"pennfudan: {len(missing)} image(s) in {images_dir} have no mask in {masks_dir}, "
                f"the first {Path(missing[0]['mask']).name}"
            )
        super().__init__(records, [{"id": 1, "name": "person"}], f"pennfudan:{root}")

    def _image(self, rec: dict) -> np.ndarray:
        return read_image(rec["path"])

    def _size(self, rec: dict) -> tuple[int, int]:
        return image_size(rec["path"])

    def _annotations(self, rec: dict, hw: tuple[int, int]) -> list[dict]:
        with Image.open(rec["mask"]) as im:  # instance ids, not a photo: read as they are
            ids = np.asarray(im)
        if ids.ndim == 3:
            ids = ids[..., 0]
        if ids.shape != tuple(hw):
            raise InfoviewError(
                f"pennfudan: mask {rec['mask']} is {ids.shape[1]}x{ids.shape[0]}, its image {hw[1]}x{hw[0]}"
            )
        anns = []
        for k in np.unique(ids):
            if k == 0:
                continue
            mask = ids == k
            anns.append({"category_id": 1, "bbox": mask_box_xywh(mask), "iscrowd": 0,
                         "area": float(mask.sum()), "mask": mask})
        return anns


@register_source("pennfudan", kind="detection", usage="pennfudan:<root>",
                 help="Penn-Fudan pedestrians: <root>/PNGImages/*.png and <root>/PedMasks/*_mask.png",
                 looks_like=lambda text: os.path.isdir(os.path.join(text, "PedMasks")))
def open_pennfudan(root: str) -> PennFudanDetection:
    return PennFudanDetection(root)
