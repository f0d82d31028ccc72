"""Random views on the accelerator: SimCLR, MoCo v2, BYOL and multi-crop recipes.

Why views are made here, on the device, and not in the data loader: a
contrastive method needs V differently augmented views of every image. Made
per image in loader workers (the torchvision/PIL way), each view costs a
decode-sized amount of CPU work, so the CPU, not the accelerator, sets the
pace, and it gets worse with every extra view (multi-crop takes 8). Here the
loader decodes and resizes each image once and ships one uint8 batch to the
device; the V views are then a few batched kernels each (crop+resize+flip as
one ``grid_sample``, colour jitter + grayscale + normalisation as one
per-sample 3x3 matrix, blur as two depthwise convolutions), with no Python
loop over images. On a GPU this is a small fraction of a training step; on a
CPU it still beats per-image PIL pipelines (see docs/results.md, "Views"),
provided torch's threads do not spin on busy cores: where loader workers or
other jobs share the CPU, start Python with ``OMP_WAIT_POLICY=PASSIVE`` (and
``THP_MEM_ALLOC_ENABLE=1``), or call ``torch.set_num_threads(1)``.

Usage::

    from infoview.augment import build_views
    views = build_views("simclr", 32, normalize="cifar10", seed=0)
    v1, v2 = views(images_uint8_on_device)        # two (B, 3, 32, 32) float tensors
    build_views("simclr", 32, overrides={"jitter.p": 0.5})
    build_views("multicrop", 224, num_local=6)     # 2 x 224 px + 6 x 96 px

Recipes are data (:data:`RECIPES`, ops and defaults in :data:`OPS`); see
:mod:`infoview.augment.recipes` for overrides and :mod:`infoview.augment.fused`
for exactly what each op computes and how it differs from torchvision's.
Seeding is described on :class:`Views`.

Names are imported on first use: importing this package (or its light
``choices`` and ``recipes``) imports no torch.
"""
from __future__ import annotations

from infoview.utils.lazy import lazy_exports

_EXPORTS = {
    "NORMALIZATION": "infoview.augment.recipes",
    "OPS": "infoview.augment.recipes",
    "RECIPES": "infoview.augment.recipes",
    "ViewSpec": "infoview.augment.recipes",
    "available_recipes": "infoview.augment.recipes",
    "resolve": "infoview.augment.recipes",
    "BACKENDS": "infoview.augment.choices",
    "Views": "infoview.augment.views",
    "build_views": "infoview.augment.views",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, fresh=("RECIPES",))
