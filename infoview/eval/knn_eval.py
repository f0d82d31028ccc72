"""Weighted kNN accuracy of a frozen encoder: `infoview knn backbone=... data.source=...`.

Features of the train and test splits are extracted once from the frozen
encoder (BN in eval mode, images centre-cropped and resized to the size the
encoder was pretrained at, normalised as in pretraining: the same extraction
as `infoview linear`); each test image is classified by the weighted vote of
its knn.k nearest train images by cosine similarity, weights
exp(similarity / knn.temperature) (Wu et al. 2018; k = 200 and T = 0.07 as in
the InstDisc, DINO and solo-learn evaluations). Top-1 / top-5 on the test
split are written to OUT/knn.json and printed; no training, no
hyper-parameter but k and T, so it is the quick check of a backbone.

backbone: a pretraining checkpoint (or its run folder), an export folder
(infoview export), random:<checkpoint or export> (the same encoder at its
initial weights: the baseline of that run), or random:<timm arch>.

Example: infoview knn backbone=runs/demo data.source=digits out_dir=runs/demo/knn
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infoview.eval.backbone import FROZEN_DATA

DEFAULTS: dict[str, Any] = {
    "out_dir": "runs/knn",
    "backbone": "",
    "data": dict(FROZEN_DATA),
    "knn": {"k": 200, "temperature": 0.07},
    "train": {"seed": 0, "device": "auto", "progress": True},
}


def run(cfg) -> dict:
    from infoview.config import save_config
    from infoview.eval.backbone import frozen_splits
    from infoview.eval.knn import knn_accuracy
    from infoview.utils.io import atomic_write_text

    bb, device, (xtr, ytr), (xte, yte) = frozen_splits(cfg)
    d = cfg.data
    scores = knn_accuracy(xtr.to(device), ytr.to(device), xte.to(device), yte.to(device), k=cfg.knn.k,
                          temperature=cfg.knn.temperature)
    result = {"backbone": bb.description, "data": d.source, "feature_dim": int(xtr.shape[1]), **scores}
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "knn.json", json.dumps(result, indent=2))
    return result
