"""The work of `infoview knn` (infoview.commands.knn documents its keys)."""
from __future__ import annotations

import json

from infoview.backbones.knn import check_temperature, positive_int, knn_accuracy
from infoview.backbones.spec import default_out_dir, frozen_splits
from infoview.config import save_config
from infoview.training.memory import out_of_memory_said
from infoview.utils.io import atomic_write_text
from infoview.utils.lock import hold_result_folder


def run(cfg) -> dict:
    positive_int(cfg.knn.k, "k")  # the cheap checks, before any extraction
    check_temperature(cfg.knn.temperature)
    with hold_result_folder(cfg.out_dir or default_out_dir(cfg.backbone, "knn"), "knn.json", cfg.overwrite,
                            "knn") as out:
        with out_of_memory_said(f"data.batch_size={cfg.data.batch_size} images per batch of the frozen encoder",
                                "data.batch_size"):
            return _run(cfg, out)


def _run(cfg, out) -> dict:
    bb, device, (xtr, ytr), (xte, yte), (source, test_source) = frozen_splits(cfg, "knn")
    scores = knn_accuracy(xtr.to(device), ytr.to(device), xte.to(device), yte.to(device), k=cfg.knn.k,
                          temperature=cfg.knn.temperature)
    result = {"backbone": bb.description, "data": source, "test_data": test_source, "feature_dim": int(xtr.shape[1]),
              **scores, "out_dir": str(out)}
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "knn.json", json.dumps(result, indent=2))
    return result
