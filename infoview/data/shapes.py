"""``shapes``: procedural images of coloured circles, squares and triangles.

Each image holds 1 to ``max_shapes`` non-overlapping shapes on a noisy
background, drawn from a generator seeded by ``(seed, split, index)``, so an
image is the same wherever and whenever it is made. ``targets(i)`` gives what
detection and segmentation evaluators need:

- ``boxes``: (K, 4) float32 ``[x1, y1, x2, y2]`` in pixel-edge coordinates
  (pixel column j covers [j, j+1)), the tight box of the instance's mask;
- ``labels``: (K,) int64 class indices into ``CLASSES``;
- ``masks``: (K, H, W) bool instance masks (shapes do not overlap, so every
  mask is the whole shape).

The image-level label (``load(i)[1]``) is the class of the largest shape.
"""
from __future__ import annotations

import numpy as np

from infoview.data.sources import ImageSource, check_split

CLASSES = ("circle", "square", "triangle")
_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}


class ShapesSource(ImageSource):
    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        num_images: int | None = None,
        max_shapes: int = 4,
        seed: int = 0,
    ):
        check_split("shapes", split, tuple(_SPLIT_IDS))
        self.name, self.split = "shapes", split
        self.size, self.max_shapes, self.seed = int(size), int(max_shapes), int(seed)
        self.num_images = int(num_images if num_images is not None else (2000 if split == "train" else 500))
        self.classes = list(CLASSES)
        self.image_size = (self.size, self.size)

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> tuple[np.ndarray, int]:
        image, target = self.sample(index)
        areas = target["masks"].reshape(len(target["masks"]), -1).sum(1)
        return image, int(target["labels"][int(np.argmax(areas))])

    def targets(self, index: int) -> dict:
        return self.sample(index)[1]

    def sample(self, index: int) -> tuple[np.ndarray, dict]:
        """The image (H, W, 3) uint8 and its targets (boxes, labels, masks)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for shapes ({len(self)} images)")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5  # pixel centres
        base = rng.uniform(40, 110, size=3)
        ramp = rng.uniform(-30, 30, size=3)[None, None, :] * (xx[..., None] / s - 0.5)
        image = base + ramp + rng.normal(0, 6, size=(s, s, 3))
        occupied = np.zeros((s, s), dtype=bool)
        masks, labels = [], []
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            for _attempt in range(30):
                cls = int(rng.integers(len(CLASSES)))
                r = rng.uniform(0.08, 0.22) * s  # half-extent
                cx, cy = rng.uniform(r + 1, s - r - 1, size=2)
                mask = _draw(cls, cx, cy, r, xx, yy)
                grown = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 1) | np.roll(mask, -1, 1)
                if mask.sum() >= 9 and not (grown & occupied).any():
                    break
            else:
                continue
            colour = rng.uniform(150, 255, size=3)
            colour[int(rng.integers(3))] = rng.uniform(0, 80)  # saturated, far from the background
            image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
            occupied |= mask
            masks.append(mask)
            labels.append(cls)
        if not masks:  # cannot happen at the default sizes, but keep the contract
            mask = _draw(1, s / 2, s / 2, s / 6, xx, yy)
            image[mask] = (230, 40, 40)
            masks, labels = [mask], [1]
        masks_arr = np.stack(masks)
        boxes = np.stack([_box(m) for m in masks_arr]).astype(np.float32)
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        return image, {
            "boxes": boxes,
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": masks_arr,
        }


def _draw(cls: int, cx: float, cy: float, r: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    if cls == 0:  # circle
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if cls == 1:  # axis-aligned square
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # upward triangle: apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
    inside = yy <= cy + r
    inside &= 2 * (xx - cx) <= (yy - (cy - r))
    inside &= 2 * (cx - xx) <= (yy - (cy - r))
    return inside


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
