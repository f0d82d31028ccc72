"""Pretrain an image encoder without labels, with any registered objective.

`infoview pretrain [--config FILE] [key=value ...]` runs on one CPU, one GPU,
or many GPUs under DDP (launched by torchrun or `infoview launch`). The loader
decodes each image once; `augment` makes the views on the device; the method
(`simclr` or `moco`) turns embeddings into positive and negative critic scores;
the objective (`objective.name`, any of `infoview.objectives.available()`, with
its own keys as `objective.<key>`) gives the loss and the MI lower bound it
certifies on the batch's cross-view matrix (`mi`), reported against that
bound's own ceiling (`mi_ceiling`); what the training rows read, which is not
a bound, is `mi_estimate` (infoview.pretrain.methods says why they differ).

data.batch_size is the global batch: each of W processes takes batch_size / W,
and the peak learning rate is optim.lr scaled from optim.ref_batch to the global
batch by optim.lr_scaling (linear or sqrt), so the same config trains alike on
1 GPU or 16. Warm-up for optim.warmup_epochs, then cosine to optim.min_lr.
train.max_steps > 0 sets the run's length in steps instead of train.epochs.

The online monitors read data.eval_split of data.eval_source (by default
data.source); held-out data that is the training data (a .beton holds one
split) or that names other classes is an error at start.

Writes to out_dir: config.yaml (the effective config, with the commit),
curves.png (the curves below, redrawn at each evaluation and at the end),
metrics.csv and tb/ (loss, mi, mi_ceiling, mi_estimate, lr, images_per_sec, and every
train.eval_every epochs the online kNN top-1 and online probe top-1 on
data.eval_split), checkpoints/last.pt (every train.ckpt_every_steps steps, at
each epoch's end and at the end; prev.pt is the one before), and
pretrain.json (the final figures). train.resume=auto continues from
checkpoints/last.pt when there is one; a path resumes from that file.

Example: infoview pretrain --config demo out_dir=runs/demo
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command

_KEYS: dict[str, Any] = {
    "out_dir": "runs/pretrain",
    "method": "simclr",
    "data": {
        "source": "digits",
        "split": "train",
        "eval_source": "",  # where data.eval_split lives when it is another source (a second .beton); "" = source
        "skip_bad": False,  # replace an unreadable training image by the next readable one, name and count it
        "eval_split": "test",
        "batch_size": 256,
        "num_workers": 2,
        "backend": "auto",
        "resolution": 0,
    },
    "augment": {"recipe": "simclr", "size": 32, "num_views": 2, "normalize": "imagenet", "backend": "fused",
                "overrides": {}},
    "model": {
        "arch": "resnet18",
        "cifar_stem": False,
        "kwargs": {},
        "proj_hidden": 2048,
        "proj_dim": 128,
        "proj_layers": 2,
        "proj_bn": True,
        "proj_last_bn": False,
        "pred_hidden": 0,
        "sync_bn": False,
    },
    "objective": {"name": "infonce"},
    "optim": {
        "name": "sgd",
        "lr": 0.3,
        "lr_scaling": "linear",
        "ref_batch": 256,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "betas": [0.9, 0.999],
        "warmup_epochs": 10.0,
        "min_lr": 0.0,
        "clip_grad": 0.0,
        "probe_lr": 0.1,
    },
    "train": {
        "epochs": 100,
        "max_steps": 0,
        "seed": 0,
        "device": "auto",
        "precision": "auto",
        "channels_last": True,
        "compile": False,
        "ckpt_every_steps": 500,
        "resume": "auto",
        "allow_config_change": False,  # resume a run with other training settings (both configs are kept)
        "eval_every": 10,
        "log_every": 10,
        "threads": 0,
        "progress": True,
    },
    "monitor": {"knn_k": 200, "knn_t": 0.07, "probe": True, "max_images": 0},
}
OPEN_SECTIONS = ("objective", "model.kwargs", "augment.overrides")
# a new objective or architecture does not inherit the old one's keys (ml_cpc's alpha under ring, a ResNet's
# channels under a ViT); the ones dropped are named on stderr
SECTION_RESETS = {"objective.name": "objective", "model.arch": "model.kwargs", "augment.recipe": "augment.overrides"}


def __getattr__(name: str):
    """``DEFAULTS``: the keys above with each registered method's section (``simclr``, ``moco``) after
    ``objective``. Built on first use: the methods import torch, which ``infoview --help`` does without."""
    if name != "DEFAULTS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from infoview.pretrain.methods import method_sections

    keys: dict[str, Any] = {}
    for key, value in _KEYS.items():
        keys[key] = value
        if key == "objective":
            keys.update(method_sections())
    return keys


def _save_on_preempt() -> str | None:
    from infoview.pretrain.engine import current_trainer

    trainer = current_trainer()
    if trainer is None:
        return None
    path = trainer.save_now()
    return f"pre-empted or out of time at step {trainer.step}; saved {path}"


def _check_launch(cfg) -> None:
    """A requeued job resumes from its checkpoint: train.resume=never on a folder that holds one cannot work."""
    from pathlib import Path

    from infoview.errors import InfoviewError
    from infoview.runtime.checkpoint import find_resume

    if str(cfg.train.resume).lower() in ("never", "none", "", "false") and find_resume(Path(cfg.out_dir) / "checkpoints"):
        raise InfoviewError(f"{cfg.out_dir} already holds a checkpoint and train.resume={cfg.train.resume}")


COMMAND = Command(
    help="Pretrain an encoder without labels (simclr or moco, any objective); checkpoints and resumes.",
    distributed=True,
    resume="train.resume=auto",
    save_on_preempt=_save_on_preempt,
    check_launch=_check_launch,
    open_sections=OPEN_SECTIONS,
    section_resets=SECTION_RESETS,
)


def run(cfg) -> dict | None:
    from infoview.pretrain.engine import run as pretrain

    return pretrain(cfg)
