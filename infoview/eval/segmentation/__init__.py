"""The work of `infoview segment` (infoview.commands.segment documents its keys): set-up, training, scoring, report.

A sub-package: the model is in model.py, the metrics in metrics.py and the picture in plot.py.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from infoview.augment.recipes import normalization
from infoview.backbones.spec import default_out_dir, load_backbone_spec
from infoview.config import save_config
from infoview.data.segmentation import SegmentationSet, open_segmentation_splits
from infoview.errors import ConfigError, InfoviewError
from infoview.eval.segmentation.metrics import confusion_matrix, constant_baseline, segmentation_metrics, void_values
from infoview.eval.segmentation.model import SegmentationModel, dilated_backbone
from infoview.eval.segmentation.plot import plot_predictions
from infoview.training.components import SkippingSampler, dataloader_epochs
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import Saves, fit
from infoview.training.memory import out_of_memory_said
from infoview.training.optim import build_optimizer, poly_factor
from infoview.utils.device import resolve_device
from infoview.utils.io import atomic_write_text
from infoview.utils.lock import hold_result_folder

def _check(cfg) -> None:
    """What the keys' schema (infoview.commands.segment) cannot say: how keys relate to each other."""
    t, d = cfg.train, cfg.data
    if cfg.head == "deeplabv3" and d.batch_size < 2:
        raise ConfigError("head=deeplabv3 needs data.batch_size >= 2 (its image-pooling branch has BatchNorm)")
    scale = list(d.scale)
    if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]) <= 1:
        raise ConfigError(f"data.scale must be [min, max] area fractions with 0 < min <= max <= 1, got {scale}")
    if t.max_steps == 0 and t.epochs == 0:
        raise ConfigError("give train.epochs > 0 or train.max_steps > 0 (max_steps wins when both are set)")
    ii = cfg.ignore_index
    if ii is not None and (isinstance(ii, bool) or not isinstance(ii, int) or not -1 <= ii <= 255):
        raise ConfigError(f"ignore_index must be a mask id in 0..255, or -1 for none, got {ii!r}")


#: class names that mean "no label" in a dataset's description
VOID_NAMES = ("unlabeled", "unlabelled", "void", "ignore", "ignored")


def resolve_ignore_index(given, class_names: dict[int, str], source: str) -> tuple[int, str]:
    """``(ignore_index, where it came from)``: as given, or the dataset's own void class; never a silent default."""
    if given is not None:
        return int(given), "given"
    void = sorted(i for i, name in class_names.items() if str(name).strip().lower() in VOID_NAMES)
    if len(void) == 1:
        return void[0], f"the dataset's description names {void[0]} '{class_names[void[0]]}'"
    if len(void) > 1:
        raise ConfigError(f"{source}: the dataset's description names several void classes ({void}); give "
                          "ignore_index=<id>")
    raise ConfigError(
        f"{source}: which mask id is void (no label) is not said by the data: give ignore_index=<id> "
        "(COCO's masks: 0, 'unlabeled'), or ignore_index=-1 when every id is a class (255 stays void)"
    )


def derive_num_classes(splits: Sequence, num_classes: int, ignore_index: int) -> int:
    """``num_classes`` or, when 0, the largest non-void label id of both splits + 1; labels are checked."""
    voids = set(void_values(ignore_index))
    seen: set[int] = set()
    for split in splits:
        ids = split.label_ids()
        negative = sorted(i for i in ids if i < 0)
        if negative:
            raise InfoviewError(f"{split.name} split '{split.split}': negative label {negative[0]} in the masks")
        seen |= ids
    labels = sorted(seen - voids)
    if not labels:
        raise InfoviewError(f"{splits[0].name}: every mask pixel is void ({sorted(voids)}); nothing to learn")
    derived = labels[-1] + 1
    if num_classes == 0:
        return max(derived, ignore_index + 1 if 0 <= ignore_index < 255 else 0)
    if derived > num_classes:
        raise ConfigError(
            f"num_classes={num_classes} but the masks hold label {labels[-1]}; use num_classes={derived} "
            "or 0 (derived)"
        )
    return num_classes


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - mean) / std


def _void_to(target: torch.Tensor, ignore_index: int, fill: int = -1) -> torch.Tensor:
    target = target.clone()
    for v in void_values(ignore_index):
        target[target == v] = fill
    return target


def train_head(model, loader, steps, optimizer, mean, std, ignore_index, device, progress,
               checkpoint: FitCheckpoint | None = None, save_every: int = 0) -> list[float]:
    """``steps`` steps of per-pixel cross-entropy (void pixels carry none) under the poly schedule; the losses.

    The shared fit loop (training.loop) runs them; what is segmentation's is the step's loss. ``checkpoint``:
    the run goes on from it, and saves there when Ctrl-C or SIGTERM stops it, every ``save_every`` steps (0:
    never) and after its last step. ``loader``: a DataLoader on a ``SkippingSampler`` (:func:`_data`'s).
    """

    def step(batch):
        images, masks = batch
        images = _normalise(images.to(device, non_blocking=True), mean, std)
        target = _void_to(masks.to(device, non_blocking=True), ignore_index)
        labelled = (target >= 0).sum()
        # sum / count: a batch whose pixels are all void gives 0, not nan
        return F.cross_entropy(model(images), target, ignore_index=-1, reduction="sum") / labelled.clamp(min=1)

    model.train()
    if checkpoint is not None:  # the weights, and the generator of the loader's order
        checkpoint.track({"model": model}, {"order": loader.generator} if loader.generator is not None else {})
    return fit(step, optimizer, dataloader_epochs(loader), steps=steps, schedule=lambda s: poly_factor(s, steps),
               progress=progress, desc="segment train", hint="lower optim.lr", checkpoint=checkpoint,
               saves=Saves(every_steps=save_every)).losses


@torch.no_grad()
def evaluate(model, loader, num_classes, ignore_index, mean, std, device, keep: int, progress, describe):
    """``(confusion matrix, images scored, the first keep as (name, image, mask, prediction))``."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    samples = []
    seen = 0
    for images, masks in tqdm(loader, desc="segment eval", unit="batch", disable=not progress, dynamic_ncols=True,
                              mininterval=0.5):
        logits = model(_normalise(images.to(device), mean, std))
        if 0 <= ignore_index < num_classes:
            logits[:, ignore_index] = float("-inf")  # never predict void
        pred = logits.argmax(1)
        masks = masks.to(device)
        conf += confusion_matrix(pred, masks, num_classes, ignore_index)
        for i in range(images.shape[0]):
            if len(samples) < keep:
                samples.append((Path(describe(seen + i)).name, images[i].permute(1, 2, 0).numpy(),
                                masks[i].cpu().numpy(), pred[i].cpu().numpy()))
        seen += images.shape[0]
    return conf.cpu(), seen, samples



@dataclass
class _Data:
    """The two splits, the void id and the classes, and the datasets and loaders over the splits."""

    train_src: Any
    val_src: Any
    ignore_index: int
    ignore_from: str
    num_classes: int
    train_set: Any
    val_set: Any
    train_loader: DataLoader
    val_loader: DataLoader


def _data(cfg, device: torch.device) -> _Data:
    """The splits and their loaders: random resized crops to train on, whole images to score; leftovers are said."""

    d = cfg.data
    train_src, val_src = open_segmentation_splits(d.source, d.train_split, d.val_split, d.size)
    for split in (train_src, val_src):
        if split.unlabelled_images:
            print(f"infoview segment: {split.split}: {split.unlabelled_images} image(s) without a mask left out "
                  f"(first: {split.first_unlabelled})", file=sys.stderr)
    ignore_index, ignore_from = resolve_ignore_index(cfg.ignore_index, train_src.class_names, d.source)
    if ignore_from != "given":
        print(f"infoview segment: ignore_index not given: using {ignore_index}, as {ignore_from}", file=sys.stderr)
    num_classes = derive_num_classes([train_src, val_src], cfg.num_classes, ignore_index)

    train_set = SegmentationSet(train_src, d.size, train=True, scale=list(d.scale))
    val_set = SegmentationSet(val_src, d.size, train=False, limit=cfg.eval.max_images)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    drop_last = len(train_set) >= d.batch_size
    if not drop_last and cfg.head == "deeplabv3" and len(train_set) < 2:
        raise InfoviewError("head=deeplabv3 needs at least 2 training images")
    common = dict(num_workers=d.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=d.num_workers > 0)
    order = SkippingSampler(RandomSampler(train_set, generator=generator))  # shuffle=True's, starting anywhere
    train_loader = DataLoader(train_set, batch_size=d.batch_size, sampler=order, drop_last=drop_last,
                              generator=generator, **common)
    val_loader = DataLoader(val_set, batch_size=d.batch_size, shuffle=False, **common)
    return _Data(train_src, val_src, ignore_index, ignore_from, num_classes, train_set, val_set,
                 train_loader, val_loader)


def _build(cfg, num_classes: int, device: torch.device):
    """``(backbone spec, model on the device, what was done to its stride, mean, std)``."""
    t = cfg.train
    bb = load_backbone_spec(cfg.backbone, seed=t.seed)
    torch.manual_seed(t.seed)  # the head's init does not depend on how the backbone was built
    backbone, stride_note = dilated_backbone(bb.encoder.to(device), cfg.output_stride)
    model = SegmentationModel(backbone, cfg.head, num_classes, cfg.data.size, cfg.freeze_backbone).to(device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalization(bb.normalize, None, None))
    return bb, model, stride_note, mean, std


def _result(cfg, bb, model: SegmentationModel, stride_note: str, data: _Data, conf, n_val: int,
            losses: list[float], steps: int, seconds: tuple[float, float], device, out) -> dict:
    """segment.json but its time_s: the scores, then what was trained on what, and how."""
    d, o = cfg.data, cfg.optim
    train_src, val_src, ignore_index = data.train_src, data.val_src, data.ignore_index
    metrics = segmentation_metrics(conf, ignore_index, train_src.class_names)
    tail = losses[-max(1, min(10, len(losses))):]
    return {
        "miou": metrics.pop("miou"),
        "pixel_accuracy": metrics.pop("pixel_accuracy"),
        "mean_class_accuracy": metrics.pop("mean_class_accuracy"),
        "constant_baseline": constant_baseline(conf, ignore_index),
        "backbone": bb.description,
        "backbone_spec": str(cfg.backbone),
        "head": cfg.head,
        "freeze_backbone": bool(cfg.freeze_backbone),
        "feature_map": {"channels": model.in_channels, "stride": model.stride, "size": list(model.feature_hw),
                        "note": stride_note},
        "data": d.source,
        "train_split": train_src.split,
        "val_split": val_src.split,
        "train_images": len(data.train_set),
        "val_images": n_val,
        "images_without_mask": {train_src.split: train_src.unlabelled_images, val_src.split: val_src.unlabelled_images},
        "size": d.size,
        "num_classes": data.num_classes,
        "ignore_index": ignore_index,
        "ignore_index_from": data.ignore_from,
        "steps": steps,
        "epochs": round(steps / max(len(data.train_loader), 1), 2),
        "batch_size": d.batch_size,
        "optimizer": o.name,
        "lr": o.lr,
        "final_loss": round(sum(tail) / len(tail), 4) if losses else None,
        "device": str(device),
        "train_s": round(seconds[0], 2),
        "eval_s": round(seconds[1], 2),
        **metrics,
        "out_dir": str(out),
    }


def _write(cfg, out: Path, result: dict, samples, bb, data: _Data, n_val: int, start: float) -> None:
    """config.yaml, predictions.png (when a sample was kept), then segment.json with the run's time."""
    save_config(cfg, out / "config.yaml")
    if samples:
        title = (f"{cfg.head} head, {bb.description}\n{data.val_src.split}: mIoU {result['miou']:.1f}%, "
                 f"pixel accuracy {result['pixel_accuracy']:.1f}% ({n_val} images at {cfg.data.size} px)")
        plot_predictions(out / "predictions.png", samples, data.ignore_index, data.train_src.class_names, title)
    result["time_s"] = round(time.perf_counter() - start, 2)
    atomic_write_text(out / "segment.json", json.dumps(result, indent=2) + "\n")


def run(cfg) -> dict:
    start = time.perf_counter()
    _check(cfg)
    with hold_result_folder(cfg.out_dir or default_out_dir(cfg.backbone, "segment"), "segment.json",
                            cfg.overwrite, "segment") as out:
        with out_of_memory_said(f"data.batch_size={cfg.data.batch_size} images of data.size={cfg.data.size} px",
                                "data.batch_size or data.size"):
            checkpoint = FitCheckpoint(out / "checkpoints", settings=OmegaConf.to_container(cfg, resolve=True),
                                       command="segment", may_change=("eval.", "plot."))
            return _run(cfg, out, start, checkpoint)


def _run(cfg, out, start: float, checkpoint: FitCheckpoint) -> dict:
    t = cfg.train
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    data = _data(cfg, device)
    bb, model, stride_note, mean, std = _build(cfg, data.num_classes, device)
    steps = int(t.max_steps) if t.max_steps > 0 else int(t.epochs) * len(data.train_loader)

    o = cfg.optim
    optimizer = build_optimizer(o.name, model, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    t0 = time.perf_counter()
    losses = train_head(model, data.train_loader, steps, optimizer, mean, std, data.ignore_index, device, t.progress,
                        checkpoint, int(t.ckpt_every_steps))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conf, n_val, samples = evaluate(model, data.val_loader, data.num_classes, data.ignore_index, mean, std, device,
                                    cfg.plot.num_images, t.progress, data.val_src.describe)
    eval_s = time.perf_counter() - t0
    result = _result(cfg, bb, model, stride_note, data, conf, n_val, losses, steps, (train_s, eval_s), device, out)
    _write(cfg, out, result, samples, bb, data, n_val, start)
    checkpoint.remove()  # a way back into an unfinished run only
    return result
