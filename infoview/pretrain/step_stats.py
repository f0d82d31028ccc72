"""The figures of one pretraining step, by name, reduced over the processes in one collective.

A step's figures travel together as one float32 tensor so that DDP pays for one ``all_reduce`` a step, as it
always has: :data:`MEAN` are averaged over the processes, :data:`SUM` summed. :func:`reduce_step` stacks
them in that order, reduces them once and hands back a :class:`StepStats` whose fields carry their names.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from infoview.training import distributed as D


@dataclass(frozen=True)
class StepStats:
    """One step's figures over every process (Python floats).

    ``loss``, ``mi``, ``mi_estimate`` and ``probe_loss`` are the processes' mean; ``probe_correct`` and
    ``probe_count`` their sum (the online probe's hits on the training batch); ``stop`` counts the
    processes asked to stop (Ctrl-C, SIGTERM), so that every one stops after the same step; ``nonfinite``
    counts those whose loss was nan or infinite.
    """

    loss: float
    mi: float
    mi_estimate: float
    probe_loss: float
    probe_correct: float
    probe_count: float
    stop: float
    nonfinite: float


#: the fields averaged over the processes, then those summed: the order of the tensor that is reduced
MEAN = ("loss", "mi", "mi_estimate", "probe_loss")
SUM = ("probe_correct", "probe_count", "stop", "nonfinite")
assert MEAN + SUM == tuple(f.name for f in fields(StepStats))


def reduce_step(out, stop: bool, world_size: int) -> StepStats:
    """A method's step output (``out``: its ``StepOutput``) and this process's stop request, over every process."""
    stats = torch.stack([
        out.ssl_loss.float(), out.mi.float(), out.mi_estimate.float(), out.probe_loss.float(),
        out.probe_correct.float(), out.probe_count.float(), out.loss.new_tensor(float(stop)).float(),
        (~torch.isfinite(out.loss)).float(),
    ])
    if D.is_distributed():
        torch.distributed.all_reduce(stats)
        stats[:len(MEAN)] /= world_size
    return StepStats(*stats.tolist())
