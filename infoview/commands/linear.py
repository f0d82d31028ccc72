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
The classifier's SGD is optim.lr and optim.weight_decay (train.lr and
train.weight_decay, their names on main, still work with a note).
Stopped (Ctrl-C, SIGTERM, or pre-emption under infoview launch), a run
saves OUT/checkpoints/last.pt; the same command run again resumes it.

{frozen}

Example: infoview linear backbone=runs/demo data.source=digits out_dir=runs/demo/linear
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command, save_fit_on_preempt
from infoview.commands._frozen import frozen_doc, frozen_keys
from infoview.schema import Key

__doc__ = frozen_doc(__doc__, "linear", "linear.json")

DEFAULTS: dict[str, Any] = frozen_keys(
    "linear", "linear.json",
    augment=Key(False, "train on fresh crop + flip views every epoch, not cached features (slower)"),
    optim={
        "lr": Key(0.1, "peak learning rate of the classifier's SGD (cosine to 0)", above=0),
        "weight_decay": Key(0.0, "weight decay of the classifier", min=0),
    },
    train={
        "epochs": Key(100, "epochs of the linear classifier", min=1),
        "batch_size": Key(256, "features per step of the classifier", min=1),
        "seed": Key(0, "seed of the classifier's weights and order (and of random:<arch>)"),
    },
)
#: the classifier's optimiser keys were train.* until they joined every command's optim section
RENAMED = {"train.lr": "optim.lr", "train.weight_decay": "optim.weight_decay"}
COMMAND = Command(help="Linear probe of a frozen encoder (a checkpoint, or random:<...> for the baseline): top-1/top-5.",
                  resume="", save_on_preempt=save_fit_on_preempt, renamed=RENAMED)


def run(cfg) -> dict:
    from infoview.eval.linear import run as work

    return work(cfg)
