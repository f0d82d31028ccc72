"""Distil a frozen teacher encoder into a smaller student with a contrastive objective (CRD, any objective).

`infoview distill teacher=<spec> student.arch=<timm name> [key=value ...]`
trains the student so that its embedding of an image picks out the
teacher's embedding of the same image among other images' (contrastive
representation distillation, Tian et al. 2020; infoview.pretrain.methods.crd
says exactly how). ``teacher`` is any ``backbone=`` spec the evaluators take:
a pretraining run or checkpoint, an export folder, ``random:<timm arch>``.
``objective.name`` is any registered objective: infonce is CRD with a softmax,
ml_cpc is the ML-CPC paper's distillation. Without labels it is pure
self-supervised compression; with labels (``crd.ce_weight`` > 0) it is CRD's
own setting: the student's cross-entropy plus 0.8 x CRD (``crd.weight``),
each image's negatives drawn from the other classes
(infoview/configs/distill_cifar100.yaml).

The run is a pretraining run with ``method=crd``: the same engine, so it has
DDP (torchrun, `infoview launch distill ...`), exact resume
(train.resume=auto), checkpoints, metrics.csv, tb/, curves.png, the online
kNN and probe, and its folder is what `infoview export`, `infoview linear`
and `infoview knn` take (they see the student). config.yaml holds the
pretraining form of the settings (``model`` = the student with its linear
head, ``crd.teacher`` = the teacher). ``mi`` is the objective's bound between
the student's and the teacher's embeddings of the batch, with its ceiling.

Example: infoview distill teacher=runs/demo student.arch=resnet10t out_dir=runs/distill
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command
from infoview.commands import pretrain as pretrain_command
from infoview.schema import Key

# CRD's training views are a pad-and-crop and a flip: no colour change, so that the student learns the
# teacher's view of the image itself. Here a resized crop of at least a third of the image and a flip.
VIEW_OVERRIDES = {"crop": {"scale": [0.35, 1.0]}, "jitter": {"p": 0.0}, "grayscale": {"p": 0.0}, "blur": {"p": 0.0}}


def _keys() -> dict[str, Any]:
    from infoview.pretrain.methods.registry import method_sections  # read from crd.py, which is not imported

    keys = pretrain_command.own_keys()
    del keys["method"]
    model = keys.pop("model")
    keys["out_dir"] = Key("runs/distill", "where config.yaml, checkpoints/, metrics.csv, tb/ and curves.png go")
    crd = method_sections()["crd"]
    teacher = crd.pop("teacher")
    out: dict[str, Any] = {"teacher": Key(teacher.default, teacher.help)}
    out["student"] = {k: model[k] for k in ("arch", "cifar_stem", "kwargs", "sync_bn")}
    out["student"]["arch"] = Key("resnet10t", "the student: any timm model name (`infoview list archs`)")
    out.update(keys)
    out["crd"] = crd
    # (method=crd refuses any other count, naming it)
    out["augment"]["num_views"] = Key(1, "CRD takes one view per image (the teacher sees the same pixels)", min=1)
    out["augment"]["overrides"] = Key(VIEW_OVERRIDES, "edits to the recipe: CRD's views change no colour")
    out["optim"]["lr"] = Key(0.05, "peak learning rate at optim.ref_batch images per step (CRD's 0.05 at 64)",
                             above=0)
    return out


def __getattr__(name: str):
    """``DEFAULTS``, built on first use (the method's keys import torch)."""
    if name != "DEFAULTS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _keys()


OPEN_SECTIONS = ("objective", "student.kwargs", "augment.overrides")
SECTION_RESETS = {"objective.name": "objective", "student.arch": "student.kwargs",
                  "augment.recipe": "augment.overrides"}


def pretrain_config(cfg):
    """The pretraining config that trains this distillation: method=crd, the student as ``model`` with
    CRD's linear embedding head, the teacher as ``crd.teacher``."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True)
    student, teacher = d.pop("student"), d.pop("teacher")
    dim = int(d["crd"]["dim"])
    d["method"] = "crd"
    d["model"] = {**student, "proj_hidden": dim, "proj_dim": dim, "proj_layers": 1, "proj_bn": False,
                  "proj_last_bn": False}
    d["crd"]["teacher"] = _absolute(str(teacher))  # config.yaml names the same teacher from any folder
    return OmegaConf.create(d)


def _absolute(spec: str) -> str:
    """A teacher that is a path, made absolute (``random:`` kept); a timm name stays as it is."""
    from pathlib import Path

    prefix, target = ("random:", spec[len("random:"):]) if spec.startswith("random:") else ("", spec)
    return prefix + str(Path(target).resolve()) if target and Path(target).exists() else spec


def _check_launch(cfg) -> None:
    """Before a job is submitted: a teacher is named, and one that is a path exists; then pretrain's checks."""
    from pathlib import Path

    from infoview.errors import ConfigError

    spec = str(cfg.teacher).strip()
    if not spec:
        raise ConfigError("teacher= is not set: give a pretraining run, checkpoint, export or random:<timm arch>")
    target = spec[len("random:"):] if spec.startswith("random:") else spec
    if ("/" in target or not spec.startswith("random:")) and not Path(target).exists():
        raise ConfigError(f"teacher={spec}: no such run, checkpoint or export folder")
    pretrain_command.COMMAND.check_launch(cfg)


COMMAND = Command(
    help="Distil a frozen teacher into a student (CRD with any objective); checkpoints and resumes.",
    distributed=True,
    resume="train.resume=auto",
    save_on_preempt=pretrain_command.COMMAND.save_on_preempt,
    check_launch=_check_launch,
    open_sections=OPEN_SECTIONS,
    section_resets=SECTION_RESETS,
)


def run(cfg) -> dict | None:
    from infoview.pretrain.engine import run as pretrain

    return pretrain(pretrain_config(cfg), command="distill")
