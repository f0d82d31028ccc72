"""Semantic-segmentation transfer: `infoview segment backbone=... data.source=...`.

An FCN or DeepLabV3 head (torchvision's FCNHead / DeepLabHead) on the
backbone's last feature map is trained on one split with per-pixel
cross-entropy and scored on another: mIoU, pixel accuracy and per-class IoU
in percent, written to OUT/segment.json and printed, with OUT/predictions.png
(image | ground truth | prediction for a few val images) and OUT/config.yaml.

data.source: masks:<images_root>:<masks_root> (one folder per split in each
root, images and single-channel masks of class ids paired by file stem, as
../shared/data/coco128/images and .../semantic_segmentation/masks), or shapes
(procedural, no files). data.train_split / data.val_split: "" picks the two
split folders found, the one with "train" in its name for training.

Pixels whose label is ignore_index or 255 are void: they carry no loss and no
score. ignore_index is not guessed: give it (ignore_index=-1 when every id is
a class), or leave it out and it is read from the dataset's own description,
the class named unlabeled/unlabelled/void/ignore in the masks' config.yaml
(coco128: 0 = unlabeled; shapes: 0 = void); which one was used is said on
stderr and in segment.json. A dataset with no such description is an error
that asks for it. mIoU is the mean IoU over the
classes that occur in the val ground truth. Images and masks are resized to
data.size x data.size for training (random resized crop + flip) and for
scoring (the whole image; masks with nearest neighbour).

backbone: a pretraining checkpoint (or its run folder), random:<checkpoint>,
random:<timm arch>. CNNs give their last feature map, dilated to
output_stride 8 as in FCN/DeepLabV3 where timm can (ResNets; 32 = as built);
ViTs give their patch tokens as a map (the ViT is set to data.size, position
embeddings resampled). freeze_backbone=true trains the head only on frozen
features. Optimiser: SGD with momentum and a poly schedule (adamw for ViTs).

Example: infoview segment backbone=runs/demo data.source=masks:../shared/data/coco128/images:../shared/data/coco128/semantic_segmentation/masks data.size=128 train.epochs=10
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command

DEFAULTS: dict[str, Any] = {
    "out_dir": "",  # beside the backbone (runs/x/segment; .../segment_random for random:)
    "overwrite": False,
    "backbone": "",
    "head": "fcn",
    "num_classes": 0,
    "ignore_index": None,  # None: read from the dataset's description (its void class), else an error asks
    "freeze_backbone": False,
    "output_stride": 8,
    "data": {"source": "shapes", "train_split": "", "val_split": "", "size": 256, "scale": [0.25, 1.0],
             "batch_size": 8, "num_workers": 2},
    "train": {"epochs": 30, "max_steps": 0, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
              "weight_decay": 1e-4, "device": "auto", "seed": 0, "progress": True},
    "eval": {"max_images": 0},
    "plot": {"num_images": 4},
}
COMMAND = Command(help='Train an FCN/DeepLabV3 head on a backbone; mIoU and pixel accuracy, with a PNG of predictions.', distributed=False)


def run(cfg) -> dict | None:
    from infoview.eval.segmentation import run as work

    return work(cfg)
