"""What the pretraining engine builds from a config before it trains: the objective, the method, the precision."""
from __future__ import annotations

import random

import numpy as np
import torch

from infoview.errors import ConfigError
from infoview.objectives import build
from infoview.pretrain.choices import PRECISIONS
from infoview.pretrain.methods import check_method_sections, get_method, objective_settings



def build_objective(cfg):
    get_method(cfg.method)  # an unknown method is named before the objective is built
    name = cfg.objective.name
    try:
        return build(name, **objective_settings(cfg))
    except ValueError as exc:
        raise ConfigError(f"objective.{name}: {exc}") from None


def build_method(cfg, encoder, num_classes: int, num_samples: int = 0):
    """The registered method ``cfg.method`` names, built; ``num_samples``: the split's size (a bank's rows)."""
    cls = get_method(cfg.method)
    check_method_sections(cfg)
    return cls.from_config(cfg, encoder, build_objective(cfg), num_classes, num_samples=num_samples)


def precision_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` as the autocast dtype on ``device`` (None: fp32, no autocast)."""
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{name}'")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on a CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_all(seed: int) -> None:
    """torch's, numpy's and Python's global generators from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
