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

{frozen}

Example: infoview knn backbone=runs/demo data.source=digits out_dir=runs/demo/knn
"""
from __future__ import annotations

import json
from typing import Any

from infoview.eval.backbone import FROZEN_DATA, FROZEN_HELP

__doc__ = __doc__.replace("{frozen}", FROZEN_HELP.format(command="knn", result="knn.json"))

DEFAULTS: dict[str, Any] = {
    "out_dir": "",
    "overwrite": False,
    "backbone": "",
    "data": dict(FROZEN_DATA),
    "knn": {"k": 200, "temperature": 0.07},
    "train": {"seed": 0, "device": "auto", "progress": True},
}


def run(cfg) -> dict:
    from infoview.config import save_config
    from infoview.eval.backbone import default_out_dir, frozen_splits
    from infoview.eval.knn import _check_temperature, _positive_int, knn_accuracy
    from infoview.utils.io import atomic_write_text, claim_out_dir

    _positive_int(cfg.knn.k, "k")  # the cheap checks, before any extraction
    _check_temperature(cfg.knn.temperature)
    out = claim_out_dir(cfg.out_dir or default_out_dir(cfg.backbone, "knn"), "knn.json", cfg.overwrite)
    bb, device, (xtr, ytr), (xte, yte), (source, test_source) = frozen_splits(cfg, "knn")
    scores = knn_accuracy(xtr.to(device), ytr.to(device), xte.to(device), yte.to(device), k=cfg.knn.k,
                          temperature=cfg.knn.temperature)
    result = {"backbone": bb.description, "data": source, "test_data": test_source, "feature_dim": int(xtr.shape[1]),
              **scores, "out_dir": str(out)}
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "knn.json", json.dumps(result, indent=2))
    return result
