"""The momentum (EMA) encoder of MoCo and BYOL, and its cosine momentum schedule.

MoCo's keys come from a slowly moving copy of the query encoder, so the keys
in the queue, encoded over many steps, stay consistent with each other (He et
al. 2020); BYOL's target network is the same device. After every optimiser
step the copy moves towards the online weights:

    theta_m <- m * theta_m + (1 - m) * theta_online

with no gradient ever reaching the copy. BatchNorm running statistics are
buffers, not parameters: they are copied from the online network, as MoCo v3
and BYOL do, rather than averaged.

BYOL raises m from ``base`` to 1 over training on a cosine, see
:func:`momentum_at`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from infoview.errors import ConfigError, InfoviewError


def momentum_at(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.

    ``base`` at step 0, ``final`` at ``total_steps``; ``step`` is clamped into
    [0, total_steps]; ``total_steps <= 0`` (no schedule) gives ``base``.
    """
    if not 0.0 <= base <= final <= 1.0:
        raise ConfigError(f"momentum schedule needs 0 <= base <= final <= 1, got base={base}, final={final}")
    if total_steps <= 0:
        return float(base)
    t = min(max(step, 0), total_steps) / total_steps
    return float(final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module


class MomentumEncoder(nn.Module):
    """A frozen copy of ``online`` that :meth:`update` moves towards it by EMA.

    ``online`` may be wrapped by DistributedDataParallel (or torch.compile); the
    copy is of the plain module, so it never syncs gradients (it has none).
    Call it like the module it copies. Its train/eval mode is whatever is set
    on it (the copy starts in the online module's mode).
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(unwrap(online))
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """``p_m = m * p_m + (1 - m) * p_online`` for every parameter; buffers are copied."""
        m = float(momentum)
        if not 0.0 <= m <= 1.0:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum}")
        online = unwrap(online)
        mine, theirs = list(self.module.parameters()), list(online.parameters())
        _check_same(mine, theirs, "parameters")
        mine_b, theirs_b = list(self.module.buffers()), list(online.buffers())
        _check_same(mine_b, theirs_b, "buffers")
        if mine and m != 1.0:
            theirs = [p.detach() for p in theirs]
            if all(p.dtype == q.dtype and p.device == q.device for p, q in zip(mine, theirs)):
                torch._foreach_mul_(mine, m)
                torch._foreach_add_(mine, theirs, alpha=1.0 - m)
            else:
                for p, q in zip(mine, theirs):
                    p.mul_(m).add_(q.to(p), alpha=1.0 - m)
        if mine_b:
            torch._foreach_copy_(mine_b, theirs_b)


def _check_same(mine: list[torch.Tensor], theirs: list[torch.Tensor], what: str) -> None:
    if len(mine) != len(theirs):
        raise InfoviewError(
            f"momentum encoder has {len(mine)} {what} but the online module has {len(theirs)}; "
            "update() expects the module it was copied from"
        )
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a.shape != b.shape:
            raise InfoviewError(
                f"momentum encoder {what[:-1]} #{i} has shape {tuple(a.shape)} but the online one has "
                f"{tuple(b.shape)}; update() expects the module it was copied from"
            )
