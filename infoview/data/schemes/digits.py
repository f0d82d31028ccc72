"""``digits``: scikit-learn's bundled handwritten digits as 32x32 RGB, the embedded default (nothing to fetch)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from infoview.data.registry import register_source
from infoview.data.sources import ArraySource, check_split

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # sklearn takes a second to import: only when digits are read

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # ink in [0, 1]
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    images = x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()  # white ink on black
    return images, digits.target.astype(np.int64)


@register_source("digits", kind="images", usage="digits",
                 help="scikit-learn's bundled 1797 8x8 digits as 32x32 RGB; the last 20% (360) are the test split")
def digits_source(*, split: str = "train") -> ArraySource:
    """scikit-learn's digits as 32x32 RGB; the last 20% (360 images) are the test split."""
    check_split("digits", split, ("train", "test"))
    images, labels = _digits_arrays()
    n_train = len(images) - int(math.ceil(len(images) * DIGITS_TEST_FRACTION))
    sl = slice(0, n_train) if split == "train" else slice(n_train, None)
    return ArraySource("digits", images[sl], labels[sl], [str(d) for d in range(10)], split)
