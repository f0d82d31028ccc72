"""Out of memory, on the CPU or a GPU: one line naming the settings that size a step, and what to lower.

torch raises ``torch.OutOfMemoryError`` on a GPU, a ``RuntimeError`` ("DefaultCPUAllocator: can't allocate
memory") on the CPU, numpy a ``MemoryError``; each would end a run with a traceback from deep inside a
forward pass. (An allocation that the kernel grants and then cannot back ends the process with SIGKILL, the
OOM killer's doing: no message can come from the process then.)
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from infoview.errors import InfoviewError


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: a GPU's, the CPU's (torch or numpy), or MPS's."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


@contextlib.contextmanager
def out_of_memory_said(sizes: str, lower: str, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn running out of memory into one InfoviewError: ``out of GPU memory with <sizes>; lower <lower>``.

    ``cleanup`` runs first (a run that wrote nothing worth keeping takes its files back, so that a rerun with
    smaller settings does not meet them)."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        gpu = isinstance(exc, torch.OutOfMemoryError) or any(name in str(exc) for name in ("CUDA", "MPS"))
        device = "GPU" if gpu else "CPU"
        if cleanup is not None:
            cleanup()
        raise InfoviewError(f"out of {device} memory with {sizes}; lower {lower}") from None
