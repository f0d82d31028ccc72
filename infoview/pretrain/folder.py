"""The folder a pretraining run writes: one run holds it, and a run that runs out of memory leaves it as it was.

:func:`run_folder` wraps a run (``infoview pretrain``, ``infoview distill``):

- it holds ``out_dir`` (:func:`infoview.utils.lock.hold_folder`: a second run into it is refused with one line
  naming this one; under DDP rank 0 holds it);
- running out of memory, on a GPU or the CPU, is one line naming the settings that size a step and what to
  lower (:func:`infoview.training.memory.out_of_memory_said`), not a traceback from inside a forward pass;
- a run that saved no checkpoint before it ran out of memory takes back what it added to the folder
  (config.yaml, metrics.csv, tb/, curves.png), so that the rerun with smaller settings starts in the folder as
  it was: no TensorBoard events of a run that never trained a step beside its own.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from infoview.training.checkpoint import find_resume
from infoview.training.memory import out_of_memory_said
from infoview.utils.lock import hold_folder, remove_new_entries

LOWER = ("data.batch_size (optim.lr follows it by optim.lr_scaling) or augment.size (data.resolution), or choose a "
         "smaller model.arch; on a GPU train.precision=bf16 halves the activations")


def memory_sizes(cfg) -> str:
    """The settings that size a pretraining step's memory, as the error names them."""
    d, a = cfg.data, cfg.augment
    decoded = f", decoded at data.resolution={d.resolution} px" if d.resolution else ""
    return (f"data.batch_size={d.batch_size} (the global batch) of augment.num_views={a.num_views} views at "
            f"augment.size={a.size} px{decoded}")


def discard_unless_saved(out: Path, is_main: bool) -> Callable[[], None]:
    """A cleanup for the run about to start in ``out``: if by then it has saved no checkpoint, what it added to
    the folder goes (rank 0's; a no-op on the other ranks and in a folder that held a checkpoint already)."""
    ckpt_dir = out / "checkpoints"
    before = set(os.listdir(out)) if is_main and out.is_dir() and find_resume(ckpt_dir) is None else None

    def cleanup() -> None:
        if before is not None and find_resume(ckpt_dir) is None:
            remove_new_entries(out, before)

    return cleanup


@contextlib.contextmanager
def run_folder(cfg, command: str, is_main: bool) -> Iterator[Path]:
    """Hold ``cfg.out_dir`` for one run of ``command`` (see the module docstring)."""
    with hold_folder(cfg.out_dir, command, holder=is_main) as out:
        with out_of_memory_said(memory_sizes(cfg), LOWER, cleanup=discard_unless_saved(out, is_main)):
            yield out
