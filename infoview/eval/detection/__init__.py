"""The work of `infoview detect` (infoview.commands.detect documents its keys): set-up, data, and the report.

A sub-package: the model is in model.py, the fine-tuning (on training.loop) in train.py and the scoring
(pycocotools' COCOeval) in scoring.py.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from infoview.augment.recipes import normalization
from infoview.backbones.spec import default_out_dir, load_backbone_spec
from infoview.config import save_config
from infoview.data.detection import open_detection_source
from infoview.errors import ConfigError, InfoviewError
from infoview.eval.detection.model import build_detector, timm_model_of
from infoview.eval.detection.scoring import evaluate
from infoview.eval.detection.train import train
from infoview.training import distributed as D
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import FitResult
from infoview.training.memory import out_of_memory_said
from infoview.utils.io import atomic_write_text
from infoview.utils.lock import hold_result_folder

def _check(cfg) -> None:
    """What the keys' schema (infoview.commands.detect) cannot say: how keys relate to each other."""
    m, t = cfg.model, cfg.train
    if m.max_size < m.min_size:
        raise ConfigError(f"model.max_size ({m.max_size}) must be at least model.min_size ({m.min_size})")
    if t.max_steps == 0 and t.epochs == 0:
        raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")


def _datasets(cfg):
    d = cfg.data
    full = open_detection_source(d.source)
    if d.val_source:
        train, val = full, open_detection_source(d.val_source)
        if [c["id"] for c in val.categories] != [c["id"] for c in train.categories]:
            raise InfoviewError(
                f"data.val_source {d.val_source} has other categories than data.source {d.source} "
                f"({len(val.categories)} against {len(train.categories)}); they must list the same category ids"
            )
        val.label_to_cat = train.label_to_cat
    else:
        train, val = full.split(int(d.holdout))
    if cfg.eval.max_images:
        val = val.subset(range(min(int(cfg.eval.max_images), len(val))))
    return train, val




def require_pycocotools() -> None:
    """A one-line error with the install command when the detection extra is missing."""
    if importlib.util.find_spec("pycocotools") is None:
        raise InfoviewError(
            "infoview detect needs pycocotools (COCO AP), which is not installed: "
            "`.venv/bin/pip install -e '.[detection]'` (or `pip install pycocotools`)"
        )


def _open_data(cfg):
    """``(train set, held-out set, its COCO ground truth, its objects)``, checked before anything trains."""
    train_set, val_set = _datasets(cfg)
    if len(train_set) < 1 or len(val_set) < 1:
        raise InfoviewError(f"need training and evaluation images, got {len(train_set)} and {len(val_set)}")
    gt = val_set.coco_gt()
    gt_objects = sum(1 for a in gt.dataset["annotations"] if not a.get("iscrowd", 0))
    if gt_objects == 0:
        raise InfoviewError(
            f"the {len(val_set)} evaluation image(s) hold no object, so AP is undefined; "
            "raise data.holdout (or eval.max_images), or give data.val_source"
        )
    return train_set, val_set, gt, gt_objects


def _steps(cfg, info: D.DistInfo, device: torch.device, train_images: int) -> tuple[int, int, int]:
    """``(images per process per step, steps per epoch, steps in all)`` for the global data.batch_size."""
    t, d, world = cfg.train, cfg.data, info.world_size
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size={d.batch_size} must divide evenly over {world} processes")
    per_rank = d.batch_size // world
    steps_per_epoch = (train_images // world) // per_rank
    if steps_per_epoch < 1:
        raise InfoviewError(
            f"{train_images} training image(s) do not fill one batch of {d.batch_size}; lower data.batch_size"
        )
    total = int(t.max_steps) if t.max_steps > 0 else int(t.epochs) * steps_per_epoch
    if cfg.sync_bn and info.distributed and device.type != "cuda":
        raise ConfigError("sync_bn=true under DDP needs CUDA devices (torch's SyncBatchNorm runs on GPUs only)")
    return per_rank, steps_per_epoch, total


def _build(cfg, info: D.DistInfo, device: torch.device, num_classes: int):
    """``(backbone spec, detector on the device, the module to train through: the detector or its DDP wrapper)``."""
    t = cfg.train
    bb = load_backbone_spec(cfg.backbone, seed=t.seed)
    if getattr(bb.encoder, "cifar_stem", False) and info.is_main:
        print(f"infoview detect: {bb.description} has the CIFAR stem (a 3x3 stride-1 conv1 and no max-pool, "
              "for 32-px images): its feature maps are 4x larger per side than a standard stem's, so each step "
              f"costs about 10x more at model.min_size={cfg.model.min_size}; for photos, pretrain with "
              "model.cifar_stem=false", file=sys.stderr, flush=True)
    mean, std = normalization(bb.normalize, None, None)
    torch.manual_seed(t.seed)
    train_bn = bool(cfg.sync_bn)
    model = build_detector(bb.encoder, cfg.task, num_classes, mean, std, cfg.model, train_bn)
    if train_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
        )
    return bb, model, net


def _result(cfg, bb, model: nn.Module, data, trained: FitResult, scores, steps_per_epoch: int, eval_time: float,
            info: D.DistInfo, device: torch.device, out) -> dict[str, Any]:
    """detect.json: what was trained on what, the AP tables, and the run's size and times."""
    train_set, val_set, gt, gt_objects = data
    metrics, detections, _ = scores
    d, masks = cfg.data, cfg.task == "segm"
    return {
        "task": cfg.task,
        "model": "Mask R-CNN, FPN" if masks else "Faster R-CNN, FPN",
        "backbone": bb.description,
        "arch": type(timm_model_of(bb.encoder)).__name__,
        "data": d.source,
        "val_data": d.val_source or f"last {len(val_set)} of {d.source}",
        "train_images": len(train_set),
        "eval_images": len(val_set),
        "eval_objects": gt_objects,
        "eval_crowd": len(gt.dataset["annotations"]) - gt_objects,
        "detections": detections,
        **metrics,
        "iterations": trained.steps,
        "epochs": round(trained.steps / steps_per_epoch, 3),
        "batch_size": int(d.batch_size),
        "min_size": int(cfg.model.min_size),
        "max_size": int(cfg.model.max_size),
        "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "final_loss": round(trained.final_loss, 5),
        "world_size": info.world_size,
        "device": str(device),
        "time_s": {"train": round(trained.seconds, 2), "eval": round(eval_time, 2)},
        "out_dir": str(out),
    }


def _write(cfg, out, log: list[dict], result: dict) -> None:
    """config.yaml, train_log.csv (when a row was logged), then detect.json."""
    save_config(cfg, out / "config.yaml")
    if log:
        keys = list(log[-1])
        csv = ",".join(keys) + "\n" + "".join(
            ",".join(f"{row.get(k, '')}" for k in keys) + "\n" for row in log)
        atomic_write_text(out / "train_log.csv", csv)
    atomic_write_text(out / "detect.json", json.dumps(result, indent=2))


def run(cfg) -> dict | None:
    _check(cfg)
    require_pycocotools()
    with hold_result_folder(cfg.out_dir or default_out_dir(cfg.backbone, "detect"), "detect.json", cfg.overwrite,
                            "detect", holder=D.env_info().is_main) as out:
        m = cfg.model
        with out_of_memory_said(f"data.batch_size={cfg.data.batch_size} (the global batch) of images resized to "
                                f"model.min_size={m.min_size} px (long side at most model.max_size={m.max_size})",
                                "data.batch_size, or model.min_size and model.max_size"):
            return _run(cfg, out, _checkpoint(cfg, out))


def _checkpoint(cfg, out) -> FitCheckpoint:
    """Where a run stopped by Ctrl-C or SIGTERM saves, and goes on from when run again (checked here, first)."""
    return FitCheckpoint(out / "checkpoints", settings=OmegaConf.to_container(cfg, resolve=True), command="detect",
                         may_change=("eval.",))


def _run(cfg, out, checkpoint: FitCheckpoint) -> dict | None:
    t = cfg.train
    if t.threads:
        torch.set_num_threads(int(t.threads))
    data = _open_data(cfg)  # data first: a bad annotation file fails before anything trains
    train_set, val_set, gt, _ = data
    info, device = D.setup(t.device)
    try:
        per_rank, steps_per_epoch, total = _steps(cfg, info, device, len(train_set))
        bb, model, net = _build(cfg, info, device, train_set.num_classes)
        trained = train(net, model, train_set, cfg, info, device, per_rank, steps_per_epoch, total, checkpoint)
        start = time.time()
        scores = evaluate(model, val_set, gt, train_set.label_to_cat, cfg.task == "segm", per_rank,
                          int(cfg.data.num_workers), info, device, bool(t.progress))
        result: dict[str, Any] | None = None
        if info.is_main:
            eval_time = time.time() - start
            if t.progress:
                print(scores[2], file=sys.stderr, flush=True)
            result = _result(cfg, bb, model, data, trained, scores, steps_per_epoch, eval_time, info, device, out)
            _write(cfg, out, trained.rows, result)
            checkpoint.remove()  # a way back into an unfinished run only
        D.barrier()
        return result
    finally:
        D.teardown()
