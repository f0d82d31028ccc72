"""The objective registry and the contract every objective keeps.

An objective is an ``nn.Module`` called as ``obj(pos, neg)``:

- ``pos``: (N,) critic scores of positive pairs;
- ``neg``: (N, K) critic scores of negatives for the same rows.

Scores are critic outputs already divided by any temperature. The call returns
an :class:`ObjectiveOutput` with ``.loss`` (scalar, to minimise), ``.mi`` (the
MI lower bound in nats that the objective implies, detached) and ``.log_m``
(log of the m = K + 1 candidates a row sees, the ceiling of InfoNCE), so every
run reports how much MI it certifies and against what.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import nn

from infoview.config import did_you_mean
from infoview.errors import ConfigError

_REGISTRY: dict[str, type["Objective"]] = {}

T = TypeVar("T", bound=type)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, differentiable
    mi: torch.Tensor  # scalar, detached: the MI lower bound in nats
    log_m: float  # log(K + 1)


class Objective(nn.Module):
    """Base class: checks the inputs and computes in float32 (or float64)."""

    name: str = ""
    #: True when the loss pools all rows into one normaliser (ML-CPC) instead of
    #: averaging per-row terms; the engine then gathers every rank's rows before
    #: calling it, so that under DDP it sees the global batch, as in one process.
    pooled: bool = False

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> ObjectiveOutput:
        pos, neg = check_scores(pos, neg)
        loss, mi = self.compute(pos, neg)
        return ObjectiveOutput(loss=loss, mi=mi.detach(), log_m=math.log(neg.shape[1] + 1))

    def compute(self, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: float) -> None:
        """Objectives with a schedule (Ring's annealed threshold) override this."""


def check_scores(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; upcast half precision to float32 (float64 stays float64)."""
    if pos.dim() != 1:
        raise ValueError(f"pos must be (N,) scores of positive pairs, got shape {tuple(pos.shape)}")
    if neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"neg must be (N, K) scores with N = {pos.shape[0]} rows like pos, got shape {tuple(neg.shape)}"
        )
    if neg.shape[1] < 1:
        raise ValueError("neg must hold at least one negative per row (K >= 1)")
    dtype = torch.float64 if torch.float64 in (pos.dtype, neg.dtype) else torch.float32
    return pos.to(dtype), neg.to(dtype)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("infonce")`` makes the class buildable by name."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective '{name}' is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def objective_params(name: str) -> dict[str, object]:
    """The keyword arguments an objective takes, with their defaults."""
    cls = _get(name)
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _get(name: str) -> type[Objective]:
    if name not in _REGISTRY:
        msg = f"unknown objective '{name}'" + did_you_mean(name, _REGISTRY)
        raise ConfigError(msg + " Available: " + ", ".join(available()))
    return _REGISTRY[name]


def build(name: str, **kwargs) -> Objective:
    """Make an objective by name; unknown names and keys are errors naming the valid ones."""
    cls = _get(name)
    params = objective_params(name)
    for key in kwargs:
        if key not in params:
            msg = f"objective '{name}' has no parameter '{key}'" + did_you_mean(key, params)
            raise ConfigError(msg + " Parameters: " + (", ".join(params) or "none"))
    return cls(**kwargs)
