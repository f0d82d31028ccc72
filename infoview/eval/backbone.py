"""Which encoder an evaluator measures: ``backbone=<spec>``.

- ``backbone=runs/x/checkpoints/last.pt``: the encoder of a pretraining
  checkpoint, rebuilt from the config saved in it, with its trained weights;
- ``backbone=random:runs/x/checkpoints/last.pt``: the same architecture with
  the weights it had before training (rebuilt from the run's seed), the fair
  baseline for that run;
- ``backbone=random:<timm arch>``: a timm model at random initialisation.

Each returns the encoder and the input it expects (image size and
normalisation), so evaluators feed it what pretraining fed it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    from infoview.pretrain.checkpoint import load_checkpoint
    from infoview.pretrain.engine import build_encoder_from_config

    state = load_checkpoint(path)
    cfg = state["config"]
    size = int(cfg["augment"]["size"])
    seed = int(cfg["train"]["seed"]) if seed_override is None else seed_override
    torch.manual_seed(seed)  # what the pretraining run started from
    encoder = build_encoder_from_config(cfg["model"], size)
    if trained:
        prefix = "encoder."
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise InfoviewError(f"checkpoint {path}: encoder weights do not fit (missing {missing[:3]}, ...)")
    what = "pretrained" if trained else "random init of"
    return Backbone(encoder, size, cfg["augment"]["normalize"], f"{what} {path} (step {state['step']})", cfg)


def load_backbone_spec(spec: str, seed: int = 0) -> Backbone:
    spec = str(spec).strip()
    if not spec:
        raise InfoviewError(
            "give backbone=<pretraining checkpoint>, backbone=random:<checkpoint> or backbone=random:<timm arch>"
        )
    if spec.startswith("random:"):
        target = spec[len("random:"):]
        if Path(target).is_file():
            return _from_checkpoint(Path(target), trained=False)
        from infoview.models import build_encoder

        torch.manual_seed(seed)
        return Backbone(build_encoder(target), 224, "imagenet", f"random init of {target}")
    path = Path(spec)
    if path.is_dir():
        for name in ("checkpoints/last.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise InfoviewError(f"backbone {spec}: no such checkpoint file")
    return _from_checkpoint(path, trained=True)
