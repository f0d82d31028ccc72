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

from typing import Any

from infoview.commands import Command
from infoview.commands._frozen import frozen_doc, frozen_keys
from infoview.schema import Key

__doc__ = frozen_doc(__doc__, "knn", "knn.json")

DEFAULTS: dict[str, Any] = frozen_keys(
    "knn", "knn.json",
    knn={
        # unbounded here: the kNN's own check says it ("k must be a positive integer")
        "k": Key(200, "neighbours that vote (a positive integer)"),
        "temperature": Key(0.07, "the votes weigh exp(cosine similarity / temperature)", above=0),
    },
    train={"seed": Key(0, "seed of random:<arch> weights")},
)
COMMAND = Command(help="Weighted kNN accuracy of a frozen encoder (k = 200, temperature 0.07 by default).")


def run(cfg) -> dict:
    from infoview.eval.knn import run as work

    return work(cfg)
