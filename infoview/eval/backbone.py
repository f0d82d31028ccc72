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
one feature extraction the linear probe and kNN share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from infoview.errors import InfoviewError


@dataclass
class Backbone:
    encoder: nn.Module
    size: int  # input side in pixels
    normalize: str  # a preset of infoview.augment.recipes.normalization
    description: str
    pretrain_config: dict | None = None


def _from_checkpoint(path: Path, trained: bool, seed_override: int | None = None) -> Backbone:
    from infoview.models.export import encoder_from_checkpoint
    from infoview.pretrain.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if seed_override is not None:
        state = {**state, "config": {**state["config"], "train": {**state["config"]["train"], "seed": seed_override}}}
    encoder, state = encoder_from_checkpoint(path, trained=trained, state=state)
    cfg = state["config"]
    what = "pretrained" if trained else "random init of"
    return Backbone(encoder, int(cfg["augment"]["size"]), cfg["augment"]["normalize"],
                    f"{what} {path} (step {state['step']})", cfg)


def _from_export(folder: Path, trained: bool, seed: int) -> Backbone:
    from infoview.models.export import build_export_encoder, load_export, read_export_config

    if trained:
        encoder, config = load_export(folder)
    else:
        config = read_export_config(folder)
        pretrain = config.get("pretrain_config") or {}
        torch.manual_seed(int(pretrain.get("train", {}).get("seed", seed)))  # what the run started from
        if pretrain.get("model") and pretrain.get("augment"):
            from infoview.pretrain.engine import build_encoder_from_config

            encoder = build_encoder_from_config(pretrain["model"], int(pretrain["augment"]["size"]))
        else:
            encoder = build_export_encoder(config)
    source = config.get("source") or {}
    what = "exported" if trained else "random init of export"
    step = f" (step {source['step']})" if trained and "step" in source else ""
    return Backbone(encoder, int(config["input_size"][-1]), config.get("normalize") or "imagenet",
                    f"{what} {folder}{step}", config.get("pretrain_config"))


def _checkpoint_in(path: Path) -> Path:
    if path.is_dir():
        for name in ("checkpoints/last.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
    return path


def load_backbone_spec(spec: str, seed: int = 0) -> Backbone:
    from infoview.models.export import CONFIG, is_export_dir

    spec = str(spec).strip()
    if not spec:
        raise InfoviewError(
            "give backbone=<pretraining checkpoint or run folder>, backbone=<export folder>, "
            "backbone=random:<checkpoint or export folder> or backbone=random:<timm arch>"
        )
    if spec.startswith("random:"):
        target = spec[len("random:"):]
        if is_export_dir(target):
            return _from_export(Path(target), trained=False, seed=seed)
        if Path(target).is_file() or Path(target).is_dir():
            ckpt = _checkpoint_in(Path(target))
            if not ckpt.is_file():
                raise InfoviewError(f"backbone {spec}: {target} holds no checkpoint (checkpoints/last.pt) "
                                    f"and no export ({CONFIG} + model.safetensors)")
            return _from_checkpoint(ckpt, trained=False)
        from infoview.models import build_encoder

        torch.manual_seed(seed)
        return Backbone(build_encoder(target), 224, "imagenet", f"random init of {target}")
    path = Path(spec)
    if path.is_dir() and (path / CONFIG).is_file():
        return _from_export(path, trained=True, seed=seed)  # errors name what the export lacks
    path = _checkpoint_in(path)
    if not path.is_file():
        raise InfoviewError(f"backbone {spec}: no such checkpoint file or export folder")
    return _from_checkpoint(path, trained=True)


#: the data keys of the commands that measure frozen features (linear, knn)
FROZEN_DATA = {"source": "digits", "train_split": "train", "test_split": "test", "batch_size": 256,
               "num_workers": 2, "backend": "auto"}


def frozen_splits(cfg):
    """``(backbone, device, (train feats, labels), (test feats, labels))`` from a linear/knn config
    (``backbone``, ``data.*`` as in :data:`FROZEN_DATA`, ``train.device``, ``train.seed``, ``train.progress``)."""
    from infoview.utils.device import resolve_device

    device = resolve_device(cfg.train.device)
    bb = load_backbone_spec(cfg.backbone, seed=cfg.train.seed)
    d = cfg.data
    feats = frozen_features(bb, d.source, (d.train_split, d.test_split), d.batch_size, d.num_workers, d.backend,
                            device, cfg.train.progress)
    return bb, device, feats[d.train_split], feats[d.test_split]


def frozen_features(
    bb: Backbone,
    source: str,
    splits: Sequence[str],
    batch_size: int,
    num_workers: int,
    backend: str,
    device,
    progress: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (features (N, D) float32, labels (N,) int64)}`` on the CPU, in source order.

    The encoder is moved to ``device`` (it stays there) and run in eval mode
    on the images of each split, resized to ``bb.size`` and normalised with
    ``bb.normalize``: what pretraining fed it, minus the randomness. A split
    named twice is extracted once.
    """
    from infoview.augment.recipes import normalization
    from infoview.data import build_loader
    from infoview.eval.features import extract_features
    from infoview.utils.device import resolve_device

    device = resolve_device(device)
    encoder = bb.encoder.to(device)
    mean, std = normalization(bb.normalize, None, None)
    feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in splits:
        if split in feats:
            continue
        loader = build_loader(source, batch_size, split=split, shuffle=False, drop_last=False, device=device,
                              num_workers=num_workers, resolution=bb.size, backend=backend)
        feats[split] = extract_features(encoder, loader, mean, std, device=device, progress=progress,
                                        desc=f"features {split}")
    return feats
