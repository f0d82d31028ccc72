"""Pretrain an image encoder without labels, with any registered objective.

`infoview pretrain [--config FILE] [key=value ...]` runs on one CPU, one GPU,
or many GPUs under DDP (launched by torchrun or `infoview launch`). The loader
decodes each image once; `augment` makes the views on the device; the method
(`simclr`, `moco`, `moco_v3`, `ir`, `cmc`, `la`, ...) turns embeddings into positive
and negative critic scores; the objective (`objective.name`, any of
`infoview.objectives.available()`, with its own keys as `objective.<key>`) gives the loss and the MI lower bound it
certifies on the batch's cross-view matrix (`mi`), reported against that
bound's own ceiling (`mi_ceiling`); what the training rows read, which is not
a bound, is `mi_estimate` (infoview.pretrain.methods says why they differ).

data.batch_size is the global batch: each of W processes takes batch_size / W,
and the peak learning rate is optim.lr scaled from optim.ref_batch to the global
batch by optim.lr_scaling (linear or sqrt), so the same config trains alike on
1 GPU or 16. Warm-up for optim.warmup_epochs, then cosine to optim.min_lr.
train.max_steps > 0 sets the run's length in steps instead of train.epochs;
one that cuts the run short keeps the warm-up's fraction of the run, so that
the cosine fits the steps that happen (a line at start says so).

The online monitors read data.eval_split of data.eval_source (by default
data.source); held-out data that is the training data (a .beton holds one
split) or that names other classes is an error at start.

Writes to out_dir: config.yaml (the effective config, with the commit),
curves.png (the curves below, redrawn at each evaluation and at the end),
metrics.csv and tb/ (loss, mi, mi_ceiling, mi_estimate, lr, images_per_sec, and every
train.eval_every epochs the online kNN top-1 and online probe top-1 on
data.eval_split), checkpoints/last.pt (every train.ckpt_every_steps steps, at
the end of every train.ckpt_every_epochs-th epoch and at the end; Ctrl-C and
SIGTERM save at the step they stop; prev.pt is the one before), and
pretrain.json (the final figures). train.resume=auto continues from
checkpoints/last.pt when there is one; a path resumes from that file.

Example: infoview pretrain --config demo out_dir=runs/demo
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command, save_fit_on_preempt
from infoview.pretrain.renamed import RENAMED
from infoview.schema import Key


def own_keys() -> dict[str, Any]:
    """The command's own keys (without the methods' sections; `infoview distill` builds on them). Their choices
    are the lists the modules that use them check against, kept in light modules (``choices.py``, the recipes'
    registry), so that building them imports no torch."""
    from infoview.augment.choices import BACKENDS as VIEW_BACKENDS
    from infoview.augment.recipes import NORMALIZATION, recipe_names
    from infoview.data.choices import BACKENDS as LOADER_BACKENDS, DECODES
    from infoview.models.choices import STREAMS
    from infoview.pretrain.choices import PRECISIONS
    from infoview.training.choices import SCALING_RULES

    return {
        "out_dir": Key("runs/pretrain", "where config.yaml, checkpoints/, metrics.csv, tb/ and curves.png go"),
        # no choices: the registry's error names the nearest method ("did you mean 'simclr'?")
        "method": Key("simclr", "simclr, moco, moco_v3, ir, cmc, la, ... (`infoview list methods`); keys: its section"),
        "data": {
            "source": Key("digits", "the training images: a source string (`infoview list sources`)"),
            "split": Key("train", "the split of data.source to train on"),
            "eval_source": Key("", "the source of data.eval_split when it is another one (a .beton); '' = data.source"),
            "skip_bad": Key(False, "replace an unreadable training image by the next one (named and counted)"),
            "eval_split": Key("test", "the held-out split the online kNN and probe are scored on"),
            "batch_size": Key(256, "the global batch, split evenly over the processes", min=2),
            # unbounded here: the loader's check says it ("num_workers must be 0 (load in this process) or ...")
            "num_workers": Key(2, "loader worker processes (ffcv: threads); 0 loads in the main process"),
            "backend": Key("auto", "loader; auto: ffcv for a .beton; resident: the split held on the device",
                           choices=LOADER_BACKENDS),
            "decode": Key("workers", "pytorch loader: decode in workers, or device: JPEGs decoded on the device",
                          choices=DECODES),
            "resident_cap_gb": Key(0.0, "most GB a resident split may take; 0 = 1/3 of a GPU (1/4 of RAM on CPU)",
                                   min=0),
            "resolution": Key(0, "side in px the images are decoded to, once; 0 = the source's own size",
                              min=0),
        },
        "augment": {
            "recipe": Key("simclr", "the views' recipe (`infoview list recipes`)", choices=tuple(recipe_names())),
            "size": Key(32, "side of each view in px (multicrop: of the global views)", min=1),
            "num_views": Key(2, "views per image (multicrop: global views; its recipe adds the local ones)", min=1),
            "normalize": Key("imagenet", "mean and std the views are normalised with",
                             choices=tuple(NORMALIZATION)),
            "backend": Key("fused", "how views are made: fused (faster) or kornia's modules",
                           choices=VIEW_BACKENDS),
            "overrides": Key({}, "edits to the recipe, dotted or nested: augment.overrides.jitter.p=0.5"),
        },
        "model": {
            "arch": Key("resnet18", "any timm model name (`infoview list archs`)"),
            "cifar_stem": Key(False, "a ResNet's 3x3 stride-1 stem without max-pool, for 32 px images"),
            "kwargs": Key({}, "keyword arguments of timm.create_model; a new model.arch starts them afresh"),
            "streams": Key("rgb", "rgb: one network on the image; lab: one on L and one on ab of CIELab (cmc)",
                           choices=STREAMS),
            "proj_hidden": Key(2048, "hidden width of the projection head", min=1),
            "proj_dim": Key(128, "output width of the projection head (the embedding)", min=1),
            "proj_layers": Key(2, "Linear layers of the projection head; 0 = no head (identity)", min=0),
            "proj_bn": Key(True, "BatchNorm after each hidden Linear of the projection head"),
            "proj_last_bn": Key(False, "BatchNorm (no affine) after the projection head's last Linear"),
            "sync_bn": Key(False, "SyncBatchNorm across processes under DDP"),
        },
        # open: the objective's own keys (objective.alpha, ...) are checked against its signature when it is built
        "objective": {"name": Key("infonce", "the objective (`infoview list objectives`); its keys: objective.<key>")},
        **_training_keys(SCALING_RULES, PRECISIONS),
    }


def _training_keys(scaling_rules: tuple, precisions: tuple) -> dict[str, Any]:
    """optim, train and monitor: how the encoder is trained, for how long, and what is watched."""
    return {
        "optim": {
            # no choices: build_optimizer's error names the nearest one ("unknown optimizer 'x'; did you mean")
            "name": Key("sgd", "sgd, lars or adamw (timm's)"),
            "lr": Key(0.3, "peak learning rate at optim.ref_batch images per step", above=0),
            "lr_scaling": Key("linear", "how the peak lr follows the global batch / optim.ref_batch",
                              choices=scaling_rules),
            "ref_batch": Key(256, "the batch optim.lr is given for", min=1),
            "weight_decay": Key(1e-4, "weight decay (none on biases, norms and a ViT's tokens)", min=0),
            "momentum": Key(0.9, "SGD and LARS momentum", min=0),
            "betas": Key([0.9, 0.999], "AdamW's betas", min=0, below=1),
            "warmup_epochs": Key(10.0, "linear warm-up from 0, in epochs (fractions allowed)", min=0),
            "min_lr": Key(0.0, "the learning rate the cosine ends at", min=0),
            "fused": Key(None, "fused optimizer kernel (sgd, adamw); null: on a GPU", choices=(None, True, False)),
            "clip_grad": Key(0.0, "clip the gradients' global norm to this; 0 = no clipping", min=0),
            "probe_lr": Key(0.1, "learning rate of the online linear probe (not scheduled)", min=0),
        },
        "train": {
            "epochs": Key(100, "the run's length in epochs (unless train.max_steps > 0)", min=0),
            "max_steps": Key(0, "the run's length in steps when > 0 (wins over train.epochs)", min=0),
            "seed": Key(0, "seed of the weights, the data order and the views"),
            "device": Key("auto", "auto (the local GPU when there is one), cpu, cuda or cuda:<index>"),
            "precision": Key("auto", "autocast dtype; auto: bf16 on a GPU, fp32 on a CPU",
                             choices=precisions),
            "channels_last": Key(True, "channels-last memory format on a GPU"),
            "compile": Key(False, "torch.compile the model"),
            "compile_mode": Key("default", "torch.compile's mode (reduce-overhead: CUDA graphs)", choices=COMPILE_MODES),
            "ckpt_every_steps": Key(500, "save checkpoints/last.pt every N steps and at epoch ends; 0: at epoch ends",
                                    min=0),
            "ckpt_every_epochs": Key(1, "save checkpoints/last.pt at the end of every N-th epoch (and of the run)",
                                     min=1),
            "resume": Key("auto", "auto: continue out_dir's checkpoint if any; never: start afresh; or a path"),
            "allow_config_change": Key(False, "resume a run with other training settings (both configs are kept)"),
            "eval_every": Key(10, "online kNN and probe every N epochs (and at the end); 0 = never", min=0),
            "log_every": Key(10, "write a metrics row every N steps", min=1),
            "threads": Key(0, "CPU threads for torch; 0 keeps torch's default", min=0),
            "progress": Key(True, "show a progress bar"),
        },
        "monitor": {
            "knn_k": Key(200, "neighbours of the online kNN", min=1),
            "knn_t": Key(0.07, "temperature of the online kNN's vote weights", above=0),
            "probe": Key(True, "train the online linear probe (when the data has labels)"),
            "max_images": Key(0, "images per split for the online kNN and probe (a fixed subset); 0 = all",
                              min=0),
        },
    }


#: train.compile_mode: torch.compile's modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPEN_SECTIONS = ("objective", "model.kwargs", "augment.overrides")
# a new objective or architecture does not inherit the old one's keys (ml_cpc's alpha under ring, a ResNet's
# channels under a ViT); the ones dropped are named on stderr
SECTION_RESETS = {"objective.name": "objective", "model.arch": "model.kwargs", "augment.recipe": "augment.overrides"}


def __getattr__(name: str):
    """``DEFAULTS``: the keys above with each registered method's section (``simclr``, ``moco``) after
    ``objective``. Built on first use: the methods import torch, which ``infoview --help`` does without."""
    if name != "DEFAULTS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from infoview.pretrain.methods.registry import method_sections

    keys: dict[str, Any] = {}
    for key, value in own_keys().items():
        keys[key] = value
        if key == "objective":
            keys.update(method_sections())
    return keys


def _check_launch(cfg) -> None:
    """A requeued job resumes from its checkpoint: train.resume=never on a folder that holds one cannot work."""
    from pathlib import Path

    from infoview.pretrain.resume import refuse_a_finished_folder

    refuse_a_finished_folder(cfg, Path(cfg.out_dir) / "checkpoints")


COMMAND = Command(
    help="Pretrain an encoder without labels (simclr, moco, moco_v3, ir, cmc, la; any objective); resumes.",
    distributed=True,
    resume="train.resume=auto",
    save_on_preempt=save_fit_on_preempt,
    check_launch=_check_launch,
    open_sections=OPEN_SECTIONS,
    section_resets=SECTION_RESETS,
    renamed=RENAMED,
)


def run(cfg) -> dict | None:
    from infoview.pretrain.engine import run as pretrain

    return pretrain(cfg)
