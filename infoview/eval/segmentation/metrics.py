"""The scores of `infoview segment`: the confusion matrix, mIoU, pixel and class accuracy, the constant baseline."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from infoview.errors import InfoviewError


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
