"""Linear evaluation of a frozen encoder: `infoview linear backbone=... data.source=...`.

Features of the train and test splits are extracted once from the frozen
encoder (BN in eval mode, images centre-cropped and resized to the size the
encoder was pretrained at, normalised as in pretraining); a linear classifier
is trained on the cached train features with SGD and a cosine schedule for
train.epochs, and top-1 / top-5 on the test split are written to
OUT/linear.json and printed.

backbone: a pretraining checkpoint (or its run folder), random:<checkpoint>
(the same encoder at its initial weights: the baseline of that run), or
random:<timm arch>.

Example: infoview linear backbone=runs/demo data.source=digits out_dir=runs/demo/linear
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "out_dir": "runs/linear",
    "backbone": "",
    "data": {"source": "digits", "train_split": "train", "test_split": "test", "batch_size": 256,
             "num_workers": 2, "backend": "auto"},
    "train": {"epochs": 100, "lr": 0.1, "batch_size": 256, "weight_decay": 0.0, "seed": 0, "device": "auto",
              "progress": True},
}


def run(cfg) -> dict:
    from infoview.augment.recipes import normalization
    from infoview.config import save_config
    from infoview.data import build_loader
    from infoview.eval.backbone import load_backbone_spec
    from infoview.eval.features import extract_features
    from infoview.eval.linear import train_linear_probe
    from infoview.utils.device import resolve_device
    from infoview.utils.io import atomic_write_text

    device = resolve_device(cfg.train.device)
    bb = load_backbone_spec(cfg.backbone, seed=cfg.train.seed)
    encoder = bb.encoder.to(device)
    mean, std = normalization(bb.normalize, None, None)
    d = cfg.data
    feats = {}
    for split in (d.train_split, d.test_split):
        loader = build_loader(d.source, d.batch_size, split=split, shuffle=False, drop_last=False, device=device,
                              num_workers=d.num_workers, resolution=bb.size, backend=d.backend)
        feats[split] = extract_features(encoder, loader, mean, std, device=device, progress=cfg.train.progress,
                                        desc=f"features {split}")
    (xtr, ytr), (xte, yte) = feats[d.train_split], feats[d.test_split]
    t = cfg.train
    result = train_linear_probe(xtr, ytr, xte, yte, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                weight_decay=t.weight_decay, seed=t.seed, device=device, progress=t.progress)
    result = {"backbone": bb.description, "data": d.source, "feature_dim": int(xtr.shape[1]), **result}
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "linear.json", json.dumps(result, indent=2))
    return result
