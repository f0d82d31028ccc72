"""The work of `infoview detect` (infoview.commands.detect documents its keys)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from infoview.config import did_you_mean
from infoview.data.detection import collate, mask_to_rle, open_detection_source, quiet_coco
from infoview.errors import ConfigError, InfoviewError

TASKS = ("segm", "bbox")
SCHEDULES = ("step", "cosine")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
PYRAMID_STRIDES = (4, 8, 16, 32)
WARMUP_FACTOR = 0.001  # lr at step 0, as a fraction of train.lr (Detectron2's default)
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --------------------------------------------------------------------------- backbones


def timm_model_of(encoder: nn.Module) -> nn.Module:
    """The timm model inside an infoview Encoder (or the model itself)."""
    return getattr(encoder, "backbone", encoder)


def is_resnet_like(model: nn.Module) -> bool:
    names = {n for n, _ in model.named_children()}
    return {"conv1", *RESNET_STAGES} <= names


def is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _freeze_bn(parent: nn.Module, names: Sequence[str]) -> None:
    """Replace BatchNorm in the named children of ``parent`` by FrozenBatchNorm2d (timm's, BN+act too)."""
    from timm.layers import freeze_batch_norm_2d

    for name in names:
        child = getattr(parent, name, None)
        if isinstance(child, nn.Module):
            setattr(parent, name, freeze_batch_norm_2d(child))


def _stage_channels(model: nn.Module) -> list[int]:
    """Output channels of layer1..layer4: timm's feature_info, else one dry run."""
    info = getattr(model, "feature_info", None)
    try:
        by_module = {f["module"]: int(f["num_chs"]) for f in info}
        return [by_module[s] for s in RESNET_STAGES]
    except (TypeError, KeyError):
        pass
    from torchvision.models._utils import IntermediateLayerGetter

    getter = IntermediateLayerGetter(model, {s: s for s in RESNET_STAGES})
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = getter(torch.zeros(1, 3, 64, 64))
    model.train(was_training)
    return [int(out[s].shape[1]) for s in RESNET_STAGES]


def resnet_fpn_backbone(model: nn.Module, fpn_channels: int, frozen_stages: int, train_bn: bool) -> nn.Module:
    """torchvision's BackboneWithFPN over a timm ResNet's layer1..layer4 (strides 4..32, plus a pooled level).

    The stem (everything before layer1) and the first ``frozen_stages`` stages
    stop learning (``-1``: nothing frozen). Their BatchNorm is frozen always;
    the other stages' BatchNorm too unless ``train_bn``.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    children = [n for n, _ in model.named_children()]
    stem = children[: children.index("layer1")]
    if children.index("layer4") < max(children.index(s) for s in RESNET_STAGES[:3]):
        raise InfoviewError(f"{type(model).__name__}: layer1..layer4 are not in forward order; cannot build an FPN")
    in_channels = _stage_channels(model)
    frozen = [] if frozen_stages < 0 else stem + list(RESNET_STAGES[:frozen_stages])
    for name in frozen:
        _freeze(getattr(model, name))
    _freeze_bn(model, children if not train_bn else frozen)
    return BackboneWithFPN(
        model, {s: str(i) for i, s in enumerate(RESNET_STAGES)}, in_channels, fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain Vision Transformer
    Backbones for Object Detection"): the last block's patch tokens as a map at stride
    ``patch``, turned into maps at strides 4, 8, 16, 32 by 2x2 stride-2 deconvolutions
    (LayerNorm and GELU between two) or max-pooling, each followed by a 1x1 and a 3x3
    conv with LayerNorm, plus a stride-64 level by subsampling (torchvision's
    LastLevelMaxPool). Outputs ``OrderedDict('0'..'3', 'pool')`` as BackboneWithFPN does.

    The ViT is switched to dynamic input size (position embeddings resampled to
    each batch's grid), so images of any size padded to a multiple of 32 fit.
    """

    def __init__(self, vit: nn.Module, out_channels: int, frozen_stages: int = -1):
        super().__init__()
        from timm.layers import Format, LayerNorm2d

        pe = vit.patch_embed
        ph, pw = pe.patch_size
        if ph != pw or ph & (ph - 1) or not 1 <= ph <= 32:
            raise InfoviewError(
                f"the simple feature pyramid needs square patches whose side is a power of 2 up to 32, "
                f"got patch size {ph}x{pw}"
            )
        vit.dynamic_img_size = True
        pe.strict_img_size = False
        pe.flatten = False
        pe.output_fmt = Format.NHWC
        if hasattr(pe, "dynamic_img_pad"):
            pe.dynamic_img_pad = False
        self.vit = vit
        self.patch = ph
        self.out_channels = out_channels
        dim = int(vit.num_features)
        levels = []
        for stride in PYRAMID_STRIDES:
            layers: list[nn.Module] = []
            d = dim
            if stride < ph:
                ups = int(math.log2(ph // stride))
                for j in range(ups):
                    layers.append(nn.ConvTranspose2d(d, d // 2, 2, stride=2))
                    d //= 2
                    if j < ups - 1:
                        layers += [LayerNorm2d(d), nn.GELU()]
            elif stride > ph:
                layers.append(nn.MaxPool2d(stride // ph, stride // ph))
            layers += [
                nn.Conv2d(d, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels),
            ]
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        """-1: nothing; 0: patch and position embeddings; k in 1..4: and the first k quarters of the blocks."""
        if frozen_stages < 0:
            return
        vit = self.vit
        _freeze(vit.patch_embed)
        for name in ("cls_token", "reg_token", "pos_embed", "dist_token"):
            p = getattr(vit, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)
        n = len(vit.blocks)
        for blk in list(vit.blocks)[: round(n * min(frozen_stages, 4) / 4)]:
            _freeze(blk)
        if frozen_stages >= 4:
            _freeze(vit)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:  # the R-CNN transform pads to 32; be safe anyway
            x = F.pad(x, (0, -w % self.patch, 0, -h % self.patch))
        feat = self.vit.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
        out = OrderedDict((str(i), level(feat)) for i, level in enumerate(self.levels))
        out["pool"] = F.max_pool2d(out[str(len(self.levels) - 1)], 1, 2, 0)
        return out


def build_fpn_backbone(encoder: nn.Module, fpn_channels: int, frozen_stages: int, train_bn: bool) -> nn.Module:
    model = timm_model_of(encoder)
    if is_resnet_like(model):
        return resnet_fpn_backbone(model, fpn_channels, frozen_stages, train_bn)
    if is_vit(model):
        return SimpleFeaturePyramid(model, fpn_channels, frozen_stages)
    raise InfoviewError(
        f"detection supports ResNet-like timm models (conv1, layer1..layer4: resnet*, resnet*d, seresnext*, ...) "
        f"and ViTs (vit_*, deit_*); got {type(model).__name__}"
    )


def build_detector(encoder: nn.Module, task: str, num_classes: int, mean, std, m, train_bn: bool) -> nn.Module:
    """Mask R-CNN (segm) or Faster R-CNN (bbox) with an FPN on the encoder; ``m`` is cfg.model."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    backbone = build_fpn_backbone(encoder, int(m.fpn_channels), int(m.frozen_stages), train_bn)
    c = backbone.out_channels
    rep = int(m.box_head_dim)
    kw = dict(
        min_size=int(m.min_size), max_size=int(m.max_size), image_mean=list(mean), image_std=list(std),
        box_batch_size_per_image=int(m.roi_batch_size), box_detections_per_img=int(m.detections_per_img),
        box_head=TwoMLPHead(c * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, num_classes),
    )
    if task == "bbox":
        return FasterRCNN(backbone, num_classes=None, **kw)
    md = int(m.mask_head_dim)
    return MaskRCNN(backbone, num_classes=None, mask_head=MaskRCNNHeads(c, (md,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(md, md, num_classes), **kw)


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, total: int, t) -> float:
    """Linear warm-up from WARMUP_FACTOR * lr over warmup_steps, then step decay or cosine."""
    base = float(t.lr)
    warm = min(int(t.warmup_steps), total)
    if step < warm:
        alpha = step / warm
        factor = WARMUP_FACTOR * (1 - alpha) + alpha
    else:
        factor = 1.0
    if t.schedule == "cosine":
        span = max(total - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return base * factor * 0.5 * (1 + math.cos(math.pi * progress))
    drops = sum(step >= int(round(float(f) * total)) for f in t.milestones)
    return base * factor * (0.1 ** drops)


def build_optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
    """No weight decay on 1-d parameters (biases, norms) and on the ViT's tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=float(t.lr), betas=(float(t.momentum), 0.999))
    return torch.optim.SGD(groups, lr=float(t.lr), momentum=float(t.momentum))


# --------------------------------------------------------------------------- evaluation


def detections_to_coco(output: dict, image_id: int, label_to_cat: Sequence[int], masks: bool) -> list[dict]:
    """One image's detections as COCO results: xywh boxes, category ids, RLE masks (threshold 0.5)."""
    boxes = output["boxes"].detach().float().cpu()
    if boxes.numel() == 0:
        return []
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    binary = (output["masks"][:, 0] > 0.5).cpu().numpy() if masks else None
    results = []
    for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        r = {"image_id": int(image_id), "category_id": int(label_to_cat[label]),
             "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        if binary is not None:
            r["segmentation"] = mask_to_rle(binary[k])
        results.append(r)
    return results


def coco_evaluate(gt, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> tuple[dict, str]:
    """COCOeval over ``image_ids``: AP, AP50, AP75, APs, APm, APl in percent (None where no ground truth).

    No detections at all give AP 0 (an empty result set, not an error).
    """
    from pycocotools.cocoeval import COCOeval

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = quiet_coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                             "annotations": []})
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {n: (None if float(v) < 0 else round(100.0 * float(v), 3)) for n, v in zip(METRIC_NAMES, ev.stats)}
    return metrics, text.getvalue()


@torch.no_grad()
def predict(model: nn.Module, dataset, indices: Sequence[int], batch_size: int, num_workers: int,
            device: torch.device, label_to_cat: Sequence[int], masks: bool, progress: bool) -> list[dict]:
    """COCO results for ``dataset[indices]``."""
    from tqdm import tqdm

    sub = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate)
    model.eval()
    results: list[dict] = []
    for images, targets in tqdm(loader, desc="evaluate", disable=not progress, file=sys.stderr):
        outputs = model([im.to(device, non_blocking=True) for im in images])
        for out, tgt in zip(outputs, targets):
            results += detections_to_coco(out, tgt["image_id"], label_to_cat, masks)
    return results


# --------------------------------------------------------------------------- the command


def _check(cfg) -> None:
    def choice(key: str, value: str, valid: Sequence[str]) -> None:
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(valid)}" + did_you_mean(value, valid))

    choice("task", cfg.task, TASKS)
    choice("train.schedule", cfg.train.schedule, SCHEDULES)
    choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    choice("train.precision", cfg.train.precision, PRECISIONS)
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.min_size < 1 or m.max_size < m.min_size:
        raise ConfigError(f"model.min_size ({m.min_size}) must be >= 1 and model.max_size ({m.max_size}) >= it")
    if not -1 <= m.frozen_stages <= 4:
        raise ConfigError(f"model.frozen_stages must be -1 (nothing frozen) .. 4 (all stages), got {m.frozen_stages}")
    for key in ("fpn_channels", "box_head_dim", "mask_head_dim", "roi_batch_size", "detections_per_img"):
        if m[key] < 1:
            raise ConfigError(f"model.{key} must be positive, got {m[key]}")
    if d.batch_size < 1 or d.num_workers < 0 or not 0 <= d.flip <= 1:
        raise ConfigError("data.batch_size must be >= 1, data.num_workers >= 0 and data.flip in [0, 1]")
    if t.lr <= 0 or t.warmup_steps < 0 or t.max_steps < 0 or t.epochs < 0:
        raise ConfigError("train.lr must be positive and train.warmup_steps, max_steps, epochs not negative")
    if t.max_steps == 0 and t.epochs == 0:
        raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")
    if any(not 0 < float(f) <= 1 for f in t.milestones):
        raise ConfigError(f"train.milestones are fractions of the run in (0, 1], got {list(t.milestones)}")
    if cfg.eval.max_images < 0:
        raise ConfigError(f"eval.max_images must be >= 0 (0: all held-out images), got {cfg.eval.max_images}")


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


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in target.items()}


def require_pycocotools() -> None:
    """A one-line error with the install command when the detection extra is missing."""
    import importlib.util

    if importlib.util.find_spec("pycocotools") is None:
        raise InfoviewError(
            "infoview detect needs pycocotools (COCO AP), which is not installed: "
            "`.venv/bin/pip install -e '.[detection]'` (or `pip install pycocotools`)"
        )


def run(cfg) -> dict | None:
    from tqdm import tqdm

    from infoview.augment.recipes import normalization
    from infoview.config import save_config
    from infoview.runtime.backbone import load_backbone_spec
    from infoview.runtime import distributed as D
    from infoview.utils.io import atomic_write_text

    _check(cfg)
    require_pycocotools()
    from infoview.runtime.backbone import default_out_dir
    from infoview.utils.io import claim_out_dir

    out = claim_out_dir(cfg.out_dir or default_out_dir(cfg.backbone, "detect"), "detect.json", cfg.overwrite)
    t, d, task = cfg.train, cfg.data, cfg.task
    masks = task == "segm"
    if t.threads:
        torch.set_num_threads(int(t.threads))

    # data first: a bad annotation file fails before anything trains
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

    info, device = D.setup(t.device)
    try:
        world, rank = info.world_size, info.rank
        if d.batch_size % world:
            raise ConfigError(f"data.batch_size={d.batch_size} must divide evenly over {world} processes")
        per_rank = d.batch_size // world
        steps_per_epoch = (len(train_set) // world) // per_rank
        if steps_per_epoch < 1:
            raise InfoviewError(
                f"{len(train_set)} training image(s) do not fill one batch of {d.batch_size}; lower data.batch_size"
            )
        total = int(t.max_steps) if t.max_steps > 0 else int(t.epochs) * steps_per_epoch
        if cfg.sync_bn and info.distributed and device.type != "cuda":
            raise ConfigError("sync_bn=true under DDP needs CUDA devices (torch's SyncBatchNorm runs on GPUs only)")

        bb = load_backbone_spec(cfg.backbone, seed=t.seed)
        if getattr(bb.encoder, "cifar_stem", False) and info.is_main:
            print(f"infoview detect: {bb.description} has the CIFAR stem (a 3x3 stride-1 conv1 and no max-pool, "
                  "for 32-px images): its feature maps are 4x larger per side than a standard stem's, so each step "
                  f"costs about 10x more at model.min_size={cfg.model.min_size}; for photos, pretrain with "
                  "model.cifar_stem=false", file=sys.stderr, flush=True)
        mean, std = normalization(bb.normalize, None, None)
        torch.manual_seed(t.seed)
        train_bn = bool(cfg.sync_bn)
        model = build_detector(bb.encoder, task, train_set.num_classes, mean, std, cfg.model, train_bn)
        if train_bn and info.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        net = model
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None,
            )
        optimizer = build_optimizer(model, t)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                    else contextlib.nullcontext())

        train_view = train_set.configure(masks=masks, flip=float(d.flip), targets=True)
        sampler = torch.utils.data.DistributedSampler(
            train_view, num_replicas=world, rank=rank, shuffle=True, seed=int(t.seed), drop_last=True,
        )
        loader = torch.utils.data.DataLoader(
            train_view, batch_size=per_rank, sampler=sampler, num_workers=int(d.num_workers), collate_fn=collate,
            drop_last=True, persistent_workers=d.num_workers > 0, pin_memory=device.type == "cuda",
        )
        log: list[dict] = []
        net.train()
        start = time.time()
        step, epoch, last_loss = 0, 0, float("nan")
        bar = tqdm(total=total, desc="detect", disable=not (t.progress and info.is_main), file=sys.stderr)
        while step < total:
            sampler.set_epoch(epoch)
            for images, targets in loader:
                lr = lr_at(step, total, t)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [_to_device(tg, device) for tg in targets]
                with autocast:
                    losses = net(images, targets)
                loss = sum(losses.values())
                last_loss = float(D.all_reduce_mean(loss.detach()))  # every rank stops together on a bad loss
                if not math.isfinite(last_loss):
                    raise InfoviewError(
                        f"the detection loss is {last_loss} at step {step} "
                        f"({', '.join(f'{k} {float(v):.3g}' for k, v in losses.items())}); lower train.lr "
                        "or raise train.warmup_steps, or set train.clip_grad"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.clip_grad)
                optimizer.step()
                step += 1
                if step % max(int(t.log_every), 1) == 0 or step == total:
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr, "loss": last_loss}
                    row.update({k: float(D.all_reduce_mean(v.detach())) for k, v in losses.items()})
                    log.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2g}")
                if step >= total:
                    break
            epoch += 1
        bar.close()
        train_time = time.time() - start

        # evaluation: each process takes every world-th image, rank 0 scores them all
        start = time.time()
        val_view = val_set.configure(targets=False, flip=0.0)
        mine = range(rank, len(val_view), world)
        results = predict(model, val_view, mine, per_rank, int(d.num_workers), device,
                          train_set.label_to_cat, masks, t.progress and info.is_main)
        gathered = D.all_gather_object(results)
        result: dict[str, Any] | None = None
        if info.is_main:
            results = [r for part in gathered for r in part]
            image_ids = val_set.image_ids
            metrics: dict[str, Any] = {}
            summaries = []
            for iou_type in ("bbox", "segm") if masks else ("bbox",):
                metrics[iou_type], summary = coco_evaluate(gt, results, iou_type, image_ids)
                table = "\n".join(line for line in summary.splitlines() if line.lstrip().startswith("Average"))
                summaries.append(f"COCOeval {iou_type}:\n{table}")
            eval_time = time.time() - start
            if t.progress:
                print("\n".join(summaries), file=sys.stderr, flush=True)
            result = {
                "task": task,
                "model": "Mask R-CNN, FPN" if masks else "Faster R-CNN, FPN",
                "backbone": bb.description,
                "arch": type(timm_model_of(bb.encoder)).__name__,
                "data": d.source,
                "val_data": d.val_source or f"last {len(val_set)} of {d.source}",
                "train_images": len(train_set),
                "eval_images": len(val_set),
                "eval_objects": gt_objects,
                "eval_crowd": len(gt.dataset["annotations"]) - gt_objects,
                "detections": len(results),
                **metrics,
                "iterations": step,
                "epochs": round(step / steps_per_epoch, 3),
                "batch_size": int(d.batch_size),
                "min_size": int(cfg.model.min_size),
                "max_size": int(cfg.model.max_size),
                "trainable_params": int(trainable),
                "final_loss": round(last_loss, 5),
                "world_size": world,
                "device": str(device),
                "time_s": {"train": round(train_time, 2), "eval": round(eval_time, 2)},
                "out_dir": str(out),
            }
            save_config(cfg, out / "config.yaml")
            if log:
                keys = list(log[-1])
                csv = ",".join(keys) + "\n" + "".join(
                    ",".join(f"{row.get(k, '')}" for k in keys) + "\n" for row in log)
                atomic_write_text(out / "train_log.csv", csv)
            atomic_write_text(out / "detect.json", json.dumps(result, indent=2))
        D.barrier()
        return result
    finally:
        D.teardown()
