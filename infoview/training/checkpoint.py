"""Checkpoints: written atomically, read with ``weights_only=True``, never half there.

``save_checkpoint(state, OUT/checkpoints/last.pt)`` writes to a temporary
name in the same folder, moves the previous ``last.pt`` to ``prev.pt``, then
renames the new file to ``last.pt``. A process killed at any moment leaves
either the new checkpoint or the previous one, whole. A checkpoint holds only
tensors and plain Python values, so ``torch.load(..., weights_only=True)``
reads it and nothing in it can run code.

``load_checkpoint(path)`` turns every way a file can be bad (missing, empty,
truncated, not a checkpoint) into an InfoviewError that names the file and,
when there is one, the previous good checkpoint to resume from instead.
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infoview.errors import InfoviewError
from infoview.utils.io import atomic_path

LAST, PREV = "last.pt", "prev.pt"
FORMAT = "infoview-pretrain-1"
#: how a file torch.save wrote starts: a zip archive (torch >= 1.6), or a pickle (protocol 2+, the legacy format)
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def save_checkpoint(state: dict, path: str | os.PathLike, keep_previous: bool = True, format: str = FORMAT) -> Path:
    """``state`` (tensors and plain values) in ``path`` under ``format``, atomically; see the module docstring."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # through a Python file, a full disk is an OSError torch's error chains to
            torch.save({"format": format, **state}, f)
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREV))
    return path


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Temporary files of saves that a killed process never finished."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.pt.*.tmp"):
            p.unlink(missing_ok=True)


def find_resume(folder: str | os.PathLike) -> Path | None:
    """``last.pt``, else ``prev.pt`` (a kill between the two renames), else None."""
    folder = Path(folder)
    for name in (LAST, PREV):
        if (folder / name).is_file():
            return folder / name
    return None


#: what every checkpoint holds; resuming also needs RESUME_KEYS
REQUIRED = ("config", "model", "step")
RESUME_KEYS = ("optimizer", "scaler")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    prev = path.with_name(PREV)
    hint = f"; the previous checkpoint {prev} may be good: resume from it with train.resume={prev}" if (
        prev.is_file() and prev != path
    ) else ""
    state = read_state(path, hint)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InfoviewError(
            f"{path} is not an infoview pretraining checkpoint (expected a dict with format={FORMAT!r})"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise InfoviewError(f"{path} claims to be an infoview checkpoint but lacks {', '.join(map(repr, missing))}"
                            f"{hint}")
    return state


def read_state(path: Path, hint: str = "") -> Any:
    """What ``torch.save`` wrote in ``path``, read with ``weights_only=True``; every way the file can be bad is
    one InfoviewError naming it, followed by ``hint``."""
    if not path.is_file():
        raise InfoviewError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise InfoviewError(f"checkpoint {path} is empty (0 bytes){hint}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(TORCH_MAGIC):  # text, an image, ...: no torch file, whatever unpickling would say
        raise InfoviewError(
            f"{path} is not a checkpoint or an export: a checkpoint is a file torch.save wrote "
            "(runs/<run>/checkpoints/last.pt, or the run folder), an export a folder with config.json and "
            f"model.safetensors; this file starts with {head!r}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds on foreign bytes (a text file gives KeyError)
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower():
            raise InfoviewError(
                f"refused to load {path}: it holds Python objects, not only tensors and plain values, and "
                "unpickling those can run any code; infoview checkpoints never hold them, so this file was not "
                "written by infoview (or was altered)"
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise InfoviewError(
            f"checkpoint {path} is truncated or corrupt, or not a checkpoint, and cannot be read "
            f"({type(exc).__name__}: {first}){hint}"
        ) from None


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every global RNG a step may draw from, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _python_state_to_plain(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(plain):
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)
