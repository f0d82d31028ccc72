"""Which encoder an evaluator measures: ``backbone=<spec>``, and its frozen features.

- ``backbone=runs/x/checkpoints/last.pt`` (or the run folder ``runs/x``): the
  encoder of a pretraining checkpoint, rebuilt from the config saved in it,
  with its trained weights;
- ``backbone=runs/x/export``: a backbone export (``infoview export``: a folder
  with config.json and model.safetensors);
- ``backbone=random:runs/x/checkpoints/last.pt`` (or ``random:<run folder>``,
  ``random:<export folder>``): the same architecture with the weights it had
  before training (rebuilt from the run's seed), the fair baseline for that run;
- ``backbone=random:<timm arch>``: a timm model at random initialisation.

Each returns the encoder (an :class:`infoview.models.Encoder`: ``.backbone``
is the timm model, ``.feature_dim`` its width) and the input it expects
(image size and normalisation), so evaluators feed it what pretraining fed it.

``frozen_features`` runs that encoder once over the splits of a source: the
one feature extraction the linear probe and kNN share. ``frozen_splits`` is
what `infoview linear` and `infoview knn` call: it settles the data first
(``held_out_sources``: the data the backbone was pretrained on when
``data.source`` is not given, a second source for the held-out split when
``data.test_source`` is), opens both splits and checks them against each
other before any feature is extracted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from infoview.augment.recipes import normalization
from infoview.backbones.encoder import build_encoder_from_config, encoder_from_checkpoint, resolve_checkpoint
from infoview.backbones.export import CONFIG, build_export_encoder, is_export_dir, load_export, read_export_config
from infoview.backbones.features import extract_features
from infoview.data import build_loader, check_held_out, open_source
from infoview.errors import InfoviewError
from infoview.models import build_encoder
from infoview.training.checkpoint import load_checkpoint
from infoview.utils.device import resolve_device


@dataclass
class Backbone:
    encoder: nn.Module
    size: int  # input side in pixels
    normalize: str  # a preset of infoview.augment.recipes.normalization
    description: str
    pretrain_config: dict | None = None


def _from_checkpoint(path: Path, trained: bool, seed_override: int | None = None) -> Backbone:
    state = load_checkpoint(path)
    if seed_override is not None:
        state = {**state, "config": {**state["config"], "train": {**state["config"]["train"], "seed": seed_override}}}
    encoder, state = encoder_from_checkpoint(path, trained=trained, state=state)
    cfg = state["config"]
    what = "pretrained" if trained else "random init of"
    return Backbone(encoder, int(cfg["augment"]["size"]), cfg["augment"]["normalize"],
                    f"{what} {path} (step {state['step']})", cfg)


def _from_export(folder: Path, trained: bool, seed: int) -> Backbone:
    if trained:
        encoder, config = load_export(folder)
    else:
        config = read_export_config(folder)
        pretrain = config.get("pretrain_config") or {}
        torch.manual_seed(int(pretrain.get("train", {}).get("seed", seed)))  # what the run started from
        if pretrain.get("model") and pretrain.get("augment"):
            encoder = build_encoder_from_config(pretrain["model"], int(pretrain["augment"]["size"]),
                                                pretrain["augment"].get("normalize"),
                                                where=f"{folder / CONFIG}: pretrain_config.model.kwargs")
        else:
            encoder = build_export_encoder(config, str(folder / CONFIG))
    source = config.get("source") or {}
    what = "exported" if trained else "random init of export"
    step = f" (step {source['step']})" if trained and "step" in source else ""
    return Backbone(encoder, int(config["input_size"][-1]), config.get("normalize") or "imagenet",
                    f"{what} {folder}{step}", config.get("pretrain_config"))


def _require_spec(spec) -> str:
    spec = str(spec).strip()
    if not spec:
        raise InfoviewError(
            "give backbone=<pretraining checkpoint or run folder>, backbone=<export folder>, "
            "backbone=random:<checkpoint or export folder> or backbone=random:<timm arch>"
        )
    return spec


def default_out_dir(spec: str, command: str) -> Path:
    """Where an evaluator writes when out_dir is not given: beside what it measured.

    ``runs/x`` or ``runs/x/checkpoints/last.pt`` -> ``runs/x/<command>``; an
    export folder ``runs/x/E`` (it holds config.json) -> ``runs/x/E_<command>``,
    beside it, since an export folder holds the export only; ``random:`` of
    any -> ``..._random``; ``random:<timm arch>`` ->
    ``runs/<command>/random_<arch>``. So the pretrained and random baselines of
    one run never share a folder.
    """
    spec = _require_spec(spec)
    random = spec.startswith("random:")
    target = Path(spec[len("random:"):] if random else spec)
    name = f"{command}_random" if random else command
    if target.is_file():
        return (target.parent.parent if target.parent.name == "checkpoints" else target.parent) / name
    if target.is_dir() and (target / CONFIG).is_file():
        export = target if target.name not in ("", ".", "..") else target.resolve()
        return export.parent / f"{export.name}_{name}"
    if target.is_dir():
        return target / name
    return Path("runs") / command / f"random_{target.name}"


def load_backbone_spec(spec: str, seed: int = 0) -> Backbone:
    spec = _require_spec(spec)
    if spec.startswith("random:"):
        target = spec[len("random:"):]
        if is_export_dir(target):
            return _from_export(Path(target), trained=False, seed=seed)
        if Path(target).is_file() or Path(target).is_dir():
            ckpt = resolve_checkpoint(Path(target))
            if not ckpt.is_file():
                raise InfoviewError(f"backbone {spec}: {target} holds no checkpoint (checkpoints/last.pt) "
                                    f"and no export ({CONFIG} + model.safetensors)")
            return _from_checkpoint(ckpt, trained=False)
        torch.manual_seed(seed)
        return Backbone(build_encoder(target), 224, "imagenet", f"random init of {target}")
    path = Path(spec)
    if path.is_dir() and (path / CONFIG).is_file():
        return _from_export(path, trained=True, seed=seed)  # errors name what the export lacks
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise InfoviewError(f"backbone {spec}: no such checkpoint file or export folder")
    return _from_checkpoint(path, trained=True)


def note(command: str, text: str) -> None:
    """A line on stderr that says which default was taken (stdout stays the result)."""
    import sys

    print(f"infoview {command}: {text}", file=sys.stderr, flush=True)


def held_out_sources(d, bb: Backbone, command: str) -> tuple[str, str]:
    """``(source, test_source)`` for ``data.*``; infers them from the backbone's pretraining run when not given."""
    source, test_source = str(d.source or "").strip(), str(d.test_source or "").strip()
    if not source:
        pretrain = (bb.pretrain_config or {}).get("data") or {}
        source = str(pretrain.get("source") or "")
        if not source:
            raise InfoviewError(
                f"data.source is not given, and {bb.description} records no pretraining data to default to; "
                "give data.source=<source> (and data.test_source=<source> when the held-out split is another file)"
            )
        test_source = test_source or str(pretrain.get("eval_source") or "") or source
        note(command, f"data.source not given: measuring on {source} (held-out: {test_source}, split "
                      f"'{d.test_split}'), the data its pretraining run recorded ({bb.description})")
    return source, test_source or source


def frozen_splits(cfg, command: str):
    """``(backbone, device, (train feats, labels), (test feats, labels), (source, test_source))`` from a
    linear/knn config (``backbone``, ``data.*`` as in :data:`FROZEN_DATA`, ``train.device``, ``train.seed``,
    ``train.progress``). Both splits are opened and checked against each other before any extraction."""

    device = resolve_device(cfg.train.device)
    bb = load_backbone_spec(cfg.backbone, seed=cfg.train.seed)
    d = cfg.data
    source, test_source = held_out_sources(d, bb, command)
    train = open_source(source, split=d.train_split)
    test = open_source(test_source, split=d.test_split)
    check_held_out(train, test, hint=f"name the held-out data with data.test_source=<source> ({d.test_split} split)")
    feats = frozen_features(bb, {d.train_split: train, d.test_split: test}, (d.train_split, d.test_split),
                            d.batch_size, d.num_workers, d.backend, device, cfg.train.progress)
    return bb, device, feats[d.train_split], feats[d.test_split], (source, test_source)


def frozen_features(
    bb: Backbone,
    source,
    splits: Sequence[str],
    batch_size: int,
    num_workers: int,
    backend: str,
    device,
    progress: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (features (N, D) float32, labels (N,) int64)}`` on the CPU, in source order.

    ``source``: one source for every split, or ``{split: source}``. The
    encoder is moved to ``device`` (it stays there) and run in eval mode on
    the images of each split, resized to ``bb.size`` and normalised with
    ``bb.normalize``: what pretraining fed it, minus the randomness. A split
    named twice is extracted once. Every split's loader is opened before the
    first is extracted, so a missing split fails at once.
    """

    device = resolve_device(device)
    encoder = bb.encoder.to(device)
    mean, std = normalization(bb.normalize, None, None)
    loaders = {}
    for split in splits:
        if split not in loaders:
            src = source[split] if isinstance(source, dict) else source
            loaders[split] = build_loader(src, batch_size, split=split, shuffle=False, drop_last=False,
                                          device=device, num_workers=num_workers, resolution=bb.size,
                                          backend=backend)
    return {split: extract_features(encoder, loader, mean, std, device=device, progress=progress,
                                    desc=f"features {split}") for split, loader in loaders.items()}
