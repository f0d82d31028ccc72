"""The work of `infoview segment` (infoview.commands.segment documents its keys)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infoview.config import did_you_mean
from infoview.data.segmentation import SegmentationSet, open_segmentation_splits
from infoview.errors import ConfigError, InfoviewError

HEADS = ("fcn", "deeplabv3")
OPTIMIZERS = ("sgd", "adamw")
#: DeepLabV3's atrous rates are given for output stride 8; they scale with 8 / stride
DEEPLAB_RATES_AT_STRIDE_8 = (12, 24, 36)
POLY_POWER = 0.9


# --------------------------------------------------------------------------- metrics


def void_values(ignore_index: int) -> tuple[int, ...]:
    """Mask values that are void: ``ignore_index`` and 255."""
    return tuple(sorted({int(ignore_index), 255}))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; void targets are dropped."""
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    for v in void_values(ignore_index):
        keep &= target != v
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(
    confusion: torch.Tensor | np.ndarray, ignore_index: int, class_names: dict[int, str] | None = None
) -> dict[str, Any]:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU (percent) from a confusion matrix.

    The ignore index's row (void ground truth) is dropped, so void pixels change
    nothing; a prediction of the ignore index on a labelled pixel is an error.
    Per-class IoU covers the classes present in the ground truth or the
    prediction; mIoU averages over the classes present in the ground truth
    (a class only predicted has IoU 0 and counts as false positives of the
    classes it took pixels from, not a second time as a zero in the mean).
    """
    conf = torch.as_tensor(np.asarray(confusion)).double().clone()
    k = conf.shape[0]
    if 0 <= ignore_index < k:
        conf[ignore_index, :] = 0
    tp = conf.diag()
    gt = conf.sum(1)
    pred = conf.sum(0)
    total = float(gt.sum())
    union = gt + pred - tp
    in_gt = gt > 0
    present = in_gt | (pred > 0)
    if 0 <= ignore_index < k:
        present[ignore_index] = bool(in_gt[ignore_index])  # predicted void: counted as an error, not a class
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))
    acc = torch.where(in_gt, tp / gt.clamp(min=1), torch.zeros_like(tp))
    names = class_names or {}

    def key(c: int) -> str:
        return f"{c} {names[c]}" if c in names else str(c)

    if total == 0:
        raise InfoviewError("no labelled pixel to score: every ground-truth pixel of the val split is void")
    idx = [int(c) for c in torch.nonzero(present).flatten()]
    return {
        "miou": round(100 * float(iou[in_gt].mean()), 3),
        "pixel_accuracy": round(100 * float(tp.sum()) / total, 3),
        "mean_class_accuracy": round(100 * float(acc[in_gt].mean()), 3),
        "classes_in_ground_truth": int(in_gt.sum()),
        "classes_only_predicted": [key(c) for c in idx if not in_gt[c]],
        "labelled_pixels": int(total),
        "per_class_iou": {key(c): round(100 * float(iou[c]), 3) for c in idx},
    }


def constant_baseline(confusion: torch.Tensor | np.ndarray, ignore_index: int) -> dict[str, float]:
    """What predicting the val split's most frequent class everywhere would score (a floor to beat)."""
    conf = torch.as_tensor(np.asarray(confusion)).double().clone()
    if 0 <= ignore_index < conf.shape[0]:
        conf[ignore_index, :] = 0
    gt = conf.sum(1)
    total, top = float(gt.sum()), float(gt.max())
    n = int((gt > 0).sum())
    # the majority class: IoU = its pixels / all pixels; every other class 0
    return {"miou": round(100 * top / total / max(n, 1), 3), "pixel_accuracy": round(100 * top / total, 3)}


# --------------------------------------------------------------------------- model


def _timm_model(encoder: nn.Module) -> nn.Module:
    model = getattr(encoder, "backbone", encoder)
    if not callable(getattr(model, "forward_features", None)):
        raise InfoviewError(
            f"backbone {type(model).__name__} has no forward_features(); segmentation needs a timm model"
        )
    return model


def _stride(model: nn.Module, size: int = 64) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        f = model.forward_features(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    model.train(was_training)
    if isinstance(f, (list, tuple)):
        f = f[-1]
    return max(1, round(size / f.shape[-1])) if f.dim() == 4 else 0


def dilated_backbone(encoder: nn.Module, output_stride: int) -> tuple[nn.Module, str]:
    """The timm model of ``encoder``, rebuilt with dilated last stages so that it has ``output_stride``.

    FCN and DeepLabV3 run their heads at output stride 8 (Long et al. 2015;
    Chen et al. 2017): the last stages' strides become dilations, so the
    weights are the same and the map is finer. timm does this for the models
    that take ``output_stride`` (ResNets and their kin); the encoder is rebuilt
    from its config with it and the weights are copied. Returns the model and
    a note saying what was done (or why not: ViTs keep their patch stride).
    """
    model = _timm_model(encoder)
    if output_stride in (0, 32) or is_vit(model):
        return model, "as built" if not is_vit(model) else "ViT: stride = patch size"
    if output_stride not in (8, 16):
        raise ConfigError(f"output_stride must be 8, 16 or 32 (0 = as built), got {output_stride}")
    now = _stride(model)
    if now <= output_stride:
        return model, "as built (already at or below the asked stride)"
    config = getattr(encoder, "config", None)
    timm_stride = 32 * output_stride // now  # a CIFAR stem makes a net 4x finer than timm counts
    if not isinstance(config, dict) or timm_stride not in (8, 16):
        return model, f"as built (cannot rebuild {type(model).__name__} with output_stride)"
    from infoview.models import build_encoder

    kwargs = dict(config.get("kwargs") or {})
    try:
        rebuilt = build_encoder(config["arch"], cifar_stem=bool(config.get("cifar_stem")),
                                img_size=config.get("img_size"), output_stride=timm_stride, **kwargs)
    except ConfigError:
        return model, f"as built ({config['arch']} does not take output_stride)"
    rebuilt = rebuilt.backbone.to(next(model.parameters()).device)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.train(model.training)
    return rebuilt, f"dilated to output stride {output_stride}"


def is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


def fit_vit_to(model: nn.Module, size: int) -> None:
    """Set a timm ViT to ``size`` x ``size`` input (position embeddings resampled by timm)."""
    pe = model.patch_embed
    ph, pw = (pe.patch_size if isinstance(pe.patch_size, (tuple, list)) else (pe.patch_size,) * 2)
    if size % ph or size % pw:
        lo, hi = (size // ph) * ph, (size // ph + 1) * ph
        raise ConfigError(
            f"data.size={size} is not a multiple of the ViT's patch size {ph}; use {lo or hi} or {hi}"
        )
    if getattr(model, "dynamic_img_size", False):
        return
    current = tuple(getattr(pe, "img_size", ()) or ())
    if current != (size, size):
        if not callable(getattr(model, "set_input_size", None)):
            raise InfoviewError(f"{type(model).__name__} cannot change its input size to {size}")
        model.set_input_size(img_size=(size, size))


def tokens_to_map(model: nn.Module, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, C) ViT tokens -> (B, C, h, w), prefix (class, register) tokens dropped."""
    b, n, c = tokens.shape
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    patch = tokens[:, prefix:]
    pe = getattr(model, "patch_embed", None)
    if pe is not None and callable(getattr(pe, "dynamic_feat_size", None)):
        h, w = pe.dynamic_feat_size(hw)
    else:
        h = w = int(round(math.sqrt(patch.shape[1])))
    if h * w != patch.shape[1]:
        raise InfoviewError(
            f"cannot lay out {patch.shape[1]} tokens ({n} less {prefix} prefix tokens) as a {h}x{w} map"
        )
    return patch.transpose(1, 2).reshape(b, c, h, w)


def build_head(name: str, in_channels: int, num_classes: int, stride: int) -> nn.Module:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead
    from torchvision.models.segmentation.fcn import FCNHead

    if name == "fcn":
        return FCNHead(in_channels, num_classes)
    if name == "deeplabv3":
        rates = [max(1, round(r * 8 / stride)) for r in DEEPLAB_RATES_AT_STRIDE_8]
        return DeepLabHead(in_channels, num_classes, atrous_rates=rates)
    raise ConfigError(f"unknown head '{name}'" + did_you_mean(name, HEADS) + f" Heads: {', '.join(HEADS)}")


class SegmentationModel(nn.Module):
    """A timm backbone's last feature map -> a segmentation head -> logits at the input size."""

    def __init__(self, backbone: nn.Module, head: str, num_classes: int, size: int, freeze: bool = False):
        super().__init__()
        self.backbone = backbone
        self.freeze = bool(freeze)
        self.vit = is_vit(backbone)
        if self.vit:
            fit_vit_to(backbone, size)
        if self.freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():  # one dry run: channels and stride of the feature map
            probe = self.features(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
        backbone.train(was_training)
        self.in_channels = int(probe.shape[1])
        self.stride = max(1, round(size / probe.shape[-1]))
        self.feature_hw = tuple(probe.shape[-2:])
        self.head_name = head
        self.head = build_head(head, self.in_channels, num_classes, self.stride)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            f = self.backbone.forward_features(x)
        if isinstance(f, (list, tuple)):
            f = f[-1]
        if f.dim() == 3:
            return tokens_to_map(self.backbone, f, tuple(x.shape[-2:]))
        if f.dim() != 4:
            raise InfoviewError(f"backbone features have shape {tuple(f.shape)}; expected a map or tokens")
        nf = getattr(self.backbone, "num_features", None)
        if nf is not None and f.shape[1] != nf and f.shape[-1] == nf:  # NHWC (Swin and friends)
            f = f.permute(0, 3, 1, 2)
        return f.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # frozen features: BN statistics stay as they were
        return self


# --------------------------------------------------------------------------- plot


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id -> RGB, fixed, neighbours far apart."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def colourise(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8; void is black, a real class never is."""
    pal = palette(max(256, int(mask.max()) + 1))
    pal[0] = (255, 255, 255)  # id 0 is black in VOC's map: white when it is a real class
    rgb = pal[np.clip(mask, 0, None)]
    void = np.isin(mask, void_values(ignore_index)) | (mask < 0)
    rgb[void] = 0
    return rgb


def plot_predictions(path, samples, ignore_index: int, class_names: dict[int, str], title: str = "") -> Path:
    """A grid, one row per sample: image | ground truth | prediction, with a legend of the row's classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from infoview.utils.io import save_figure

    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(12.5, 3.2 * rows + 0.6), dpi=100, squeeze=False)
    voids = set(void_values(ignore_index))
    for r, (name, image, gt, pred) in enumerate(samples):
        labelled = ~np.isin(gt, list(voids))
        acc = 100 * float((pred == gt)[labelled].mean()) if labelled.any() else float("nan")
        panels = ((image, "image"), (colourise(gt, ignore_index), "ground truth"),
                  (colourise(pred, ignore_index), f"prediction (pixel acc {acc:.0f}%)"))
        for c, (picture, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=8)
        ids = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()))
        counts = {i: int((gt == i).sum() + (pred == i).sum()) for i in ids}
        shown = sorted((i for i in ids if i not in voids), key=lambda i: -counts[i])[:14]
        pal = palette(max(256, max(ids) + 1))
        pal[0] = (255, 255, 255)
        handles = [Patch(facecolor=pal[i] / 255, edgecolor="0.4", label=f"{i} {class_names.get(i, '')}".strip())
                   for i in sorted(shown)]
        if voids & set(np.unique(gt).tolist()):
            handles.append(Patch(facecolor="black", edgecolor="0.4", label="void (not scored)"))
        more = len([i for i in ids if i not in voids]) - len(shown)
        if more > 0:
            handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{more} more"))
        axes[r, 2].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7,
                          frameon=False, handlelength=1.2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- the command


def poly_factor(step: int, total: int, power: float = POLY_POWER) -> float:
    return (1.0 - min(step, total) / max(total, 1)) ** power


def _check(cfg) -> None:
    if cfg.head not in HEADS:
        raise ConfigError(f"unknown head '{cfg.head}'" + did_you_mean(cfg.head, HEADS) + f" Heads: {', '.join(HEADS)}")
    t, d = cfg.train, cfg.data
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown train.optimizer '{t.optimizer}'" + did_you_mean(t.optimizer, OPTIMIZERS)
                          + f" Optimizers: {', '.join(OPTIMIZERS)}")
    if d.size < 8:
        raise ConfigError(f"data.size must be at least 8 pixels, got {d.size}")
    if d.batch_size < 1:
        raise ConfigError(f"data.batch_size must be positive, got {d.batch_size}")
    if cfg.head == "deeplabv3" and d.batch_size < 2:
        raise ConfigError("head=deeplabv3 needs data.batch_size >= 2 (its image-pooling branch has BatchNorm)")
    scale = list(d.scale)
    if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]) <= 1:
        raise ConfigError(f"data.scale must be [min, max] area fractions with 0 < min <= max <= 1, got {scale}")
    if t.max_steps < 0 or t.epochs < 0 or (t.max_steps == 0 and t.epochs == 0):
        raise ConfigError("give train.epochs > 0 or train.max_steps > 0 (max_steps wins when both are set)")
    if cfg.num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0 (0 = derived from the masks), got {cfg.num_classes}")
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


def train_head(model, loader, steps, optimizer, mean, std, ignore_index, device, progress) -> list[float]:
    from tqdm.auto import tqdm

    from infoview.runtime.optim import set_lr

    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="segment train", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    it = iter(loader)
    step = 0
    while step < steps:
        try:
            images, masks = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        images = _normalise(images.to(device, non_blocking=True), mean, std)
        target = _void_to(masks.to(device, non_blocking=True), ignore_index)
        lr = set_lr(optimizer, poly_factor(step, steps))
        logits = model(images)
        labelled = (target >= 0).sum()
        # sum / count: a batch whose pixels are all void gives 0, not nan
        loss = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum") / labelled.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InfoviewError(f"the loss is {value} at step {step}; lower train.lr (now {lr:g})")
        losses.append(value)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2g}", refresh=False)
    bar.close()
    return losses


@torch.no_grad()
def evaluate(model, loader, num_classes, ignore_index, mean, std, device, keep: int, progress, describe):
    from tqdm.auto import tqdm

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


def run(cfg) -> dict:
    from torch.utils.data import DataLoader

    from infoview.augment.recipes import normalization
    from infoview.config import save_config
    from infoview.runtime.backbone import load_backbone_spec
    from infoview.runtime.optim import build_optimizer
    from infoview.utils.device import resolve_device
    from infoview.utils.io import atomic_write_text

    from infoview.runtime.backbone import default_out_dir
    from infoview.utils.io import claim_out_dir

    start = time.perf_counter()
    _check(cfg)
    out = claim_out_dir(cfg.out_dir or default_out_dir(cfg.backbone, "segment"), "segment.json", cfg.overwrite)
    d, t = cfg.data, cfg.train
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    train_src, val_src = open_segmentation_splits(d.source, d.train_split, d.val_split, d.size)
    for split in (train_src, val_src):
        if split.unlabelled_images:
            print(f"infoview segment: {split.split}: {split.unlabelled_images} image(s) without a mask left out "
                  f"(first: {split.first_unlabelled})", file=sys.stderr)
    ignore_index, ignore_from = resolve_ignore_index(cfg.ignore_index, train_src.class_names, d.source)
    if ignore_from != "given":
        print(f"infoview segment: ignore_index not given: using {ignore_index}, as {ignore_from}", file=sys.stderr)
    num_classes = derive_num_classes([train_src, val_src], cfg.num_classes, ignore_index)

    bb = load_backbone_spec(cfg.backbone, seed=t.seed)
    torch.manual_seed(t.seed)  # the head's init does not depend on how the backbone was built
    backbone, stride_note = dilated_backbone(bb.encoder.to(device), cfg.output_stride)
    model = SegmentationModel(backbone, cfg.head, num_classes, d.size, cfg.freeze_backbone).to(device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalization(bb.normalize, None, None))

    train_set = SegmentationSet(train_src, d.size, train=True, scale=list(d.scale))
    val_set = SegmentationSet(val_src, d.size, train=False, limit=cfg.eval.max_images)
    generator = torch.Generator().manual_seed(t.seed)
    drop_last = len(train_set) >= d.batch_size
    if not drop_last and cfg.head == "deeplabv3" and len(train_set) < 2:
        raise InfoviewError("head=deeplabv3 needs at least 2 training images")
    common = dict(num_workers=d.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=d.num_workers > 0)
    train_loader = DataLoader(train_set, batch_size=d.batch_size, shuffle=True, drop_last=drop_last,
                              generator=generator, **common)
    val_loader = DataLoader(val_set, batch_size=d.batch_size, shuffle=False, **common)
    steps = int(t.max_steps) if t.max_steps > 0 else int(t.epochs) * len(train_loader)

    optimizer = build_optimizer(t.optimizer, model, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    t0 = time.perf_counter()
    losses = train_head(model, train_loader, steps, optimizer, mean, std, ignore_index, device, t.progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    conf, n_val, samples = evaluate(model, val_loader, num_classes, ignore_index, mean, std, device,
                           cfg.plot.num_images, t.progress, val_src.describe)
    eval_s = time.perf_counter() - t0
    metrics = segmentation_metrics(conf, ignore_index, train_src.class_names)
    tail = losses[-max(1, min(10, len(losses))):]
    result = {
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
        "train_images": len(train_set),
        "val_images": n_val,
        "images_without_mask": {train_src.split: train_src.unlabelled_images, val_src.split: val_src.unlabelled_images},
        "size": d.size,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "ignore_index_from": ignore_from,
        "steps": steps,
        "epochs": round(steps / max(len(train_loader), 1), 2),
        "batch_size": d.batch_size,
        "optimizer": t.optimizer,
        "lr": t.lr,
        "final_loss": round(sum(tail) / len(tail), 4) if losses else None,
        "device": str(device),
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        **metrics,
        "out_dir": str(out),
    }
    save_config(cfg, out / "config.yaml")
    if samples:
        title = (f"{cfg.head} head, {bb.description}\n{val_src.split}: mIoU {result['miou']:.1f}%, "
                 f"pixel accuracy {result['pixel_accuracy']:.1f}% ({n_val} images at {d.size} px)")
        plot_predictions(out / "predictions.png", samples, ignore_index, train_src.class_names, title)
    result["time_s"] = round(time.perf_counter() - start, 2)
    atomic_write_text(out / "segment.json", json.dumps(result, indent=2) + "\n")
    return result
