"""Linear evaluation of a frozen encoder: `infoview linear backbone=... data.source=...`.

Features of the train and test splits are extracted once from the frozen
encoder (BN in eval mode, images centre-cropped and resized to the size the
encoder was pretrained at, normalised as in pretraining); a linear classifier
is trained on the cached train features with SGD and a cosine schedule for
train.epochs, and top-1 / top-5 on the test split are written to
OUT/linear.json and printed. With augment=true the classifier trains instead,
every epoch, on features of fresh random-resized-crop + flip views of the
train images (the encoder stays frozen; slower: one encoder pass per image
per epoch); standardisation and the test split use the un-augmented features.

{frozen}

Example: infoview linear backbone=runs/demo data.source=digits out_dir=runs/demo/linear
"""
from __future__ import annotations

import json
from typing import Any

from infoview.eval.backbone import FROZEN_DATA, FROZEN_HELP

__doc__ = __doc__.replace("{frozen}", FROZEN_HELP.format(command="linear", result="linear.json"))

DEFAULTS: dict[str, Any] = {
    "out_dir": "",
    "overwrite": False,
    "backbone": "",
    "augment": False,
    "data": dict(FROZEN_DATA),
    "train": {"epochs": 100, "lr": 0.1, "batch_size": 256, "weight_decay": 0.0, "seed": 0, "device": "auto",
              "progress": True},
}

#: augment=true: SimCLR's crop (scale 0.08-1) and flip, every colour op and blur off
PROBE_VIEW_OVERRIDES = {"jitter.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0, "solarize.p": 0.0}


def run(cfg) -> dict:
    from infoview.config import save_config
    from infoview.eval.backbone import default_out_dir, frozen_splits
    from infoview.eval.linear import _check_settings, train_linear_probe, train_linear_probe_augmented
    from infoview.utils.io import atomic_write_text, claim_out_dir

    t = cfg.train
    _check_settings(t.epochs, t.batch_size, t.lr, t.weight_decay, 0.9, "standardize")  # before any extraction
    out = claim_out_dir(cfg.out_dir or default_out_dir(cfg.backbone, "linear"), "linear.json", cfg.overwrite)
    bb, device, (xtr, ytr), (xte, yte), (source, test_source) = frozen_splits(cfg, "linear")
    d = cfg.data
    settings = dict(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, seed=t.seed,
                    device=device, progress=t.progress)
    if cfg.augment:
        from infoview.augment import build_views
        from infoview.data import build_loader

        views = build_views("simclr", bb.size, num_views=1, seed=t.seed, normalize=bb.normalize,
                            overrides=PROBE_VIEW_OVERRIDES)
        loader = build_loader(source, t.batch_size, split=d.train_split, seed=t.seed, shuffle=True,
                              drop_last=False, device=device, num_workers=d.num_workers, resolution=bb.size,
                              backend=d.backend)
        result = train_linear_probe_augmented(bb.encoder, loader, views, xtr, ytr, xte, yte, **settings)
    else:
        result = {**train_linear_probe(xtr, ytr, xte, yte, **settings), "augment": False}
    result = {"backbone": bb.description, "data": source, "test_data": test_source, "feature_dim": int(xtr.shape[1]),
              **result, "out_dir": str(out)}
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "linear.json", json.dumps(result, indent=2))
    return result
