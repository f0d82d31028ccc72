"""Detection and instance-segmentation transfer: `infoview detect backbone=... data.source=...`.

torchvision's Mask R-CNN (task=segm) or Faster R-CNN (task=bbox) with an FPN
on the backbone is fine-tuned and scored with pycocotools' COCOeval: box AP,
AP50, AP75, APs/APm/APl and, for segm, the same for masks, in percent,
written to OUT/detect.json and printed, with OUT/config.yaml and
OUT/train_log.csv.

data.source: coco:<images>:<instances.json>, pennfudan:<root> (PNGImages/ and
PedMasks/), or shapes (procedural, no files): the detection schemes of
infoview.data.registry, opened by infoview.data.detection. The last data.holdout images
(by image id for COCO, by file name for Penn-Fudan) are held out for
evaluation, or data.val_source names a second source to evaluate on (then
data.holdout is not used). Crowd annotations are not trained on and are kept
for evaluation as COCO does; images without objects, grayscale images and
images of any size are fine.

Backbones: ResNet-like timm models (conv1 .. layer4) through torchvision's
BackboneWithFPN on layer1..layer4; ViTs (timm VisionTransformer) through a
ViTDet simple feature pyramid from the last block's tokens. The stem and the
first model.frozen_stages stages are frozen (-1: nothing); BatchNorm is
frozen (FrozenBatchNorm2d) unless sync_bn=true, which trains it (SyncBN under
DDP). Images are resized by the R-CNN transform to model.min_size (short
side) / model.max_size (long side) and normalised as in pretraining.

Training: SGD (or AdamW) with momentum, linear warm-up over train.warmup_steps,
then step decay (x0.1 at train.milestones, fractions of the run) or cosine.
train.max_steps > 0 sets the length in iterations, else train.epochs.
data.batch_size is the global batch (split across DDP processes).

backbone: a pretraining checkpoint (or its run folder), random:<checkpoint>,
random:<timm arch>, or whatever else infoview.runtime.backbone accepts.

Example: infoview detect backbone=runs/demo data.source=pennfudan:../shared/data/pennfudan train.max_steps=200
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command

DEFAULTS: dict[str, Any] = {
    "out_dir": "",  # beside the backbone (runs/x/detect; .../detect_random for random:)
    "overwrite": False,
    "backbone": "",
    "task": "segm",
    "sync_bn": False,
    "data": {"source": "shapes", "val_source": "", "holdout": 50, "batch_size": 4, "num_workers": 2, "flip": 0.5},
    "model": {"min_size": 512, "max_size": 853, "frozen_stages": 1, "fpn_channels": 256, "box_head_dim": 1024,
              "mask_head_dim": 256, "roi_batch_size": 512, "detections_per_img": 100},
    "train": {"epochs": 12, "max_steps": 0, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
              "weight_decay": 1e-4, "warmup_steps": 100, "schedule": "step", "milestones": [0.667, 0.889],
              "clip_grad": 0.0, "precision": "fp32", "device": "auto", "seed": 0, "threads": 0,
              "log_every": 20, "progress": True},
    "eval": {"max_images": 0},
}
COMMAND = Command(help='Fine-tune Mask/Faster R-CNN with FPN on a backbone; COCO box and mask AP (pycocotools).', distributed=True)


def run(cfg) -> dict | None:
    from infoview.eval.detection import run as work

    return work(cfg)
