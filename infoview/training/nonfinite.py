"""A step whose loss is not finite: what replays it, saved beside the run's checkpoints, and the one line that says so.

``stop_nonfinite`` writes ``<folder>/nonfinite_step<S>_rank<R>.pt`` (atomically, readable with
``weights_only=True``): the run's state before the step (model, optimizer, random states: what a checkpoint
holds) and what the step was given (``replay``: the batch, the views' random state, ...). It then raises an
InfoviewError naming the figures, the step, the file, the last good checkpoint (or that none was written
yet) and what to change. Only the process whose loss it was writes; the file names its rank.
"""
from __future__ import annotations

import os
from pathlib import Path

from infoview.errors import InfoviewError
from infoview.training.checkpoint import find_resume, save_checkpoint


def stop_nonfinite(folder: str | os.PathLike, step: int, rank: int, state: dict, replay: dict, *, figures: str,
                   when: str, hint: str) -> None:
    """Save ``state`` and ``replay`` for step ``step``, then stop (see the module docstring). ``figures``:
    the values that were not finite (``loss=nan, mi=nan``); ``when``: the step's place (``epoch 1.50``)."""
    folder = Path(folder)
    path = folder / f"nonfinite_step{step}_rank{rank}.pt"
    save_checkpoint({**state, **replay}, path, keep_previous=False)
    good = find_resume(folder)
    where = f"the last good checkpoint is {good}" if good is not None else "no checkpoint had been written yet"
    raise InfoviewError(
        f"the loss is not finite ({figures}) at step {step} ({when}); the model, the optimizer and the batch are "
        f"saved in {path} to investigate, and {where}. {hint}"
    )
