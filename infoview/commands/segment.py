"""Semantic-segmentation transfer: `infoview segment backbone=... data.source=...`.

An FCN or DeepLabV3 head (torchvision's FCNHead / DeepLabHead) on the
backbone's last feature map is trained on one split with per-pixel
cross-entropy and scored on another: mIoU, pixel accuracy and per-class IoU
in percent, written to OUT/segment.json and printed, with OUT/predictions.png
(image | ground truth | prediction for a few val images) and OUT/config.yaml.

data.source: masks:<images_root>:<masks_root> (one folder per split in each
root, images and single-channel masks of class ids paired by file stem, as
data/coco128/images and .../semantic_segmentation/masks, README: Data), or shapes
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
features. Optimiser (optim.*; train.optimizer, train.lr, train.momentum and
train.weight_decay, their names on main, still work with a note): SGD with
momentum and a poly schedule (adamw for ViTs).
Stopped (Ctrl-C, SIGTERM, or pre-emption under infoview launch), a run
saves OUT/checkpoints/last.pt; the same command run again resumes it.
out_dir '' writes beside the backbone: runs/x/segment (segment_random for
random:), and runs/x/export_segment for an export folder runs/x/export, which
holds the export only.

Example: infoview segment backbone=runs/demo data.source=masks:data/coco128/images:data/coco128/semantic_segmentation/masks data.size=128 train.epochs=10
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command, save_fit_on_preempt
from infoview.schema import Key

from infoview.eval.choices import HEADS, OPTIMIZERS  # noqa: E402 - imports nothing

DEFAULTS: dict[str, Any] = {
    "out_dir": Key("", "where segment.json goes; '' = beside the backbone (see above)"),
    "overwrite": Key(False, "replace a finished segment.json in out_dir"),
    "backbone": Key("", "a checkpoint or run folder, random:<checkpoint> or random:<timm arch> (see above)"),
    "head": Key("fcn", "FCN or DeepLabV3 head on the last feature map", choices=HEADS),
    "num_classes": Key(0, "classes of the head; 0 = derived from the masks", min=0),
    # the hand check stays too: it also refuses a fractional id
    "ignore_index": Key(None, "the void label (-1: none); null = read from the dataset (see above)",
                        min=-1, max=255, nullable=True),
    "freeze_backbone": Key(False, "train the head only, on frozen features"),
    "output_stride": Key(8, "a CNN's output stride, dilated where timm can; 0 or 32 = as built",
                         choices=(0, 8, 16, 32)),
    "data": {
        "source": Key("shapes", "masks:<images_root>:<masks_root>, masks:<root> or shapes"),
        "train_split": Key("", "the split folder to train on; '' = the one with 'train' in its name"),
        "val_split": Key("", "the split folder to score on; '' = the other one"),
        "size": Key(256, "images and masks are resized to size x size px", min=8),
        "scale": Key([0.25, 1.0], "[min, max] area fraction of the training crops", above=0, max=1),
        "batch_size": Key(8, "images per step", min=1),
        "num_workers": Key(2, "loader worker processes; 0 loads in the main process", min=0),
    },
    "optim": {
        "name": Key("sgd", "sgd with optim.momentum, or adamw (the choice for ViTs)", choices=OPTIMIZERS),
        "lr": Key(0.01, "peak learning rate (poly schedule to 0)", above=0),
        "momentum": Key(0.9, "SGD's momentum", min=0),
        "weight_decay": Key(1e-4, "weight decay (none on biases and norms)", min=0),
    },
    "train": {
        "epochs": Key(30, "the run's length in epochs (unless train.max_steps > 0)", min=0),
        "max_steps": Key(0, "the run's length in steps when > 0", min=0),
        "device": Key("auto", "auto (a GPU when there is one), cpu, cuda or cuda:<index>"),
        "seed": Key(0, "seed of the head's weights, the data order and random:<arch>"),
        "ckpt_every_steps": Key(0, "also save checkpoints/last.pt every N steps; 0: when stopped and at the end",
                                min=0),
        "progress": Key(True, "show progress bars"),
    },
    "eval": {"max_images": Key(0, "score the first N val images; 0 = all", min=0)},
    "plot": {"num_images": Key(4, "val images in predictions.png", min=0)},
}
#: segment's optimiser keys were train.* until they joined every command's optim section
RENAMED = {"train.optimizer": "optim.name", "train.lr": "optim.lr", "train.momentum": "optim.momentum",
           "train.weight_decay": "optim.weight_decay"}
COMMAND = Command(help='Train an FCN/DeepLabV3 head on a backbone; mIoU and pixel accuracy, with a PNG of predictions.',
                  distributed=False, resume="", save_on_preempt=save_fit_on_preempt, renamed=RENAMED)


def run(cfg) -> dict | None:
    from infoview.eval.segmentation import run as work

    return work(cfg)
