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

Training: SGD (or AdamW) with momentum, linear warm-up over optim.warmup_steps,
then step decay (x0.1 at optim.milestones, fractions of the run) or cosine.
train.max_steps > 0 sets the length in iterations, else train.epochs; a
max_steps that cuts the run short scales the warm-up with it (said at start).
data.batch_size is the global batch (split across DDP processes).
Stopped (Ctrl-C, SIGTERM, or pre-emption under infoview launch), a run
saves OUT/checkpoints/last.pt; the same command run again resumes it.

backbone: a pretraining checkpoint (or its run folder), random:<checkpoint>,
random:<timm arch>, or whatever else infoview.backbones.spec accepts.
out_dir '' writes beside it: runs/x/detect (detect_random for random:), and
runs/x/export_detect for an export folder runs/x/export, which holds the export only.

Keys named as on main still work, each with a one-line note: train.optimizer is
optim.name; train.lr, train.momentum, train.weight_decay, train.warmup_steps,
train.schedule, train.milestones and train.clip_grad are optim.<the same>.

Example: infoview detect backbone=runs/demo data.source=pennfudan:data/PennFudanPed train.max_steps=200
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command, save_fit_on_preempt
from infoview.schema import Key

from infoview.eval.choices import OPTIMIZERS, PRECISIONS, SCHEDULES, TASKS  # noqa: E402 - imports nothing

DEFAULTS: dict[str, Any] = {
    "out_dir": Key("", "where detect.json goes; '' = beside the backbone (see above)"),
    "overwrite": Key(False, "replace a finished detect.json in out_dir"),
    "backbone": Key("", "a checkpoint or run folder, random:<checkpoint> or random:<timm arch> (see above)"),
    "task": Key("segm", "segm: Mask R-CNN (boxes and masks); bbox: Faster R-CNN (boxes)", choices=TASKS),
    "sync_bn": Key(False, "train BatchNorm (SyncBN under DDP) instead of freezing it"),
    "data": {
        "source": Key("shapes", "coco:<images>:<ann.json>, pennfudan:<root> or shapes"),
        "val_source": Key("", "a second source to evaluate on; '' = the last data.holdout images of data.source"),
        "holdout": Key(50, "images of data.source held out for evaluation (without data.val_source)", min=0),
        "batch_size": Key(4, "the global batch, split evenly over the processes", min=1),
        "num_workers": Key(2, "loader worker processes per process; 0 loads in the main process", min=0),
        "flip": Key(0.5, "probability of a horizontal flip of a training image", min=0, max=1),
    },
    "model": {
        "min_size": Key(512, "the R-CNN transform resizes the short side to this, in px", min=1),
        "max_size": Key(853, "... and caps the long side at this, in px (at least model.min_size)", min=1),
        "frozen_stages": Key(1, "the stem and this many stages stay frozen; -1: nothing frozen", min=-1, max=4),
        "fpn_channels": Key(256, "channels of the feature pyramid", min=1),
        "box_head_dim": Key(1024, "width of the box head's two fully connected layers", min=1),
        "mask_head_dim": Key(256, "channels of the mask head's convolutions", min=1),
        "roi_batch_size": Key(512, "sampled regions per image for the box head's loss", min=1),
        "detections_per_img": Key(100, "detections kept per image", min=1),
    },
    "optim": {
        "name": Key("sgd", "the optimiser", choices=OPTIMIZERS),
        "lr": Key(0.01, "peak learning rate", above=0),
        "momentum": Key(0.9, "SGD's momentum, or AdamW's first beta", min=0, below=1),
        "weight_decay": Key(1e-4, "weight decay (none on biases and norms)", min=0),
        "warmup_steps": Key(100, "iterations of linear warm-up", min=0),
        "schedule": Key("step", "step: x0.1 at optim.milestones; cosine: to 0", choices=SCHEDULES),
        "milestones": Key([0.667, 0.889], "where the step schedule drops, as fractions of the run", above=0, max=1),
        "clip_grad": Key(0.0, "clip the gradients' global norm to this; 0 = no clipping", min=0),
    },
    "train": {
        "epochs": Key(12, "the run's length in epochs (unless train.max_steps > 0)", min=0),
        "max_steps": Key(0, "the run's length in iterations when > 0", min=0),
        "precision": Key("fp32", "autocast dtype", choices=PRECISIONS),
        "device": Key("auto", "auto (the local GPU when there is one), cpu, cuda or cuda:<index>"),
        "seed": Key(0, "seed of the heads' weights, the data order and random:<arch>"),
        "threads": Key(0, "CPU threads for torch; 0 keeps torch's default", min=0),
        "log_every": Key(20, "write a train_log.csv row every N iterations"),
        "ckpt_every_steps": Key(0, "also save checkpoints/last.pt every N steps; 0: when stopped and at the end",
                                min=0),
        "progress": Key(True, "show a progress bar"),
    },
    "eval": {"max_images": Key(0, "evaluate on the first N held-out images; 0 = all", min=0)},
}
#: detect's optimiser keys were train.* until they joined every command's optim section
RENAMED = {"train.optimizer": "optim.name",
           **{f"train.{k}": f"optim.{k}" for k in ("lr", "momentum", "weight_decay", "warmup_steps", "schedule",
                                                  "milestones", "clip_grad")}}
COMMAND = Command(help='Fine-tune Mask/Faster R-CNN with FPN on a backbone; COCO box and mask AP (pycocotools).',
                  distributed=True, resume="", save_on_preempt=save_fit_on_preempt, renamed=RENAMED)


def run(cfg) -> dict | None:
    from infoview.eval.detection import run as work

    return work(cfg)
