"""Scoring for `infoview detect`: detections as COCO results, COCOeval's AP table, prediction on the held-out images."""
from __future__ import annotations

import contextlib
import io
import sys
from typing import Any, Sequence

import torch
from torch import nn
from tqdm import tqdm

from infoview.data.detection import collate, mask_to_rle, quiet_coco
from infoview.training import distributed as D

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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



def evaluate(model: nn.Module, val_set, gt, label_to_cat: Sequence[int], masks: bool, batch_size: int,
             num_workers: int, info: D.DistInfo, device: torch.device,
             progress: bool) -> tuple[dict[str, Any], int, str] | None:
    """Each process predicts every world-th held-out image; the main one scores them all.

    Returns ``({iou type: metrics}, number of detections, COCOeval's tables)``
    on the main process and None on the others.
    """
    val_view = val_set.configure(targets=False, flip=0.0)
    mine = range(info.rank, len(val_view), info.world_size)
    results = predict(model, val_view, mine, batch_size, num_workers, device, label_to_cat, masks,
                      progress and info.is_main)
    gathered = D.all_gather_object(results)
    if not info.is_main:
        return None
    results = [r for part in gathered for r in part]
    metrics: dict[str, Any] = {}
    summaries = []
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        metrics[iou_type], summary = coco_evaluate(gt, results, iou_type, val_set.image_ids)
        table = "\n".join(line for line in summary.splitlines() if line.lstrip().startswith("Average"))
        summaries.append(f"COCOeval {iou_type}:\n{table}")
    return metrics, len(results), "\n".join(summaries)
