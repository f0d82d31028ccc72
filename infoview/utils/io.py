"""Atomic file writes: a temp name in the same folder, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the previous
version (if any) in place.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The file system's own error behind ``exc``: ``exc`` itself, one it was raised from or during (torch's
    ``RuntimeError`` over a full disk), or one a library names in its text (safetensors' ``(os error 28)``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        found = _OS_ERROR_IN_TEXT.search(str(current))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        current = current.__cause__ or current.__context__
    return None


def cannot_write(path: str | os.PathLike, error: OSError, kept: bool = True):
    """The one-line error for a file that could not be written: the path and what the file system said
    (``kept``: the file was being replaced whole, so a previous one is still there as it was)."""
    from infoview.errors import InfoviewError

    path = Path(path)
    kept = f"; the previous {path.name} there is kept as it was" if kept and path.is_file() else ""
    return InfoviewError(f"cannot write {path} ({error.strerror or error}){kept}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    A write that the file system refuses (a full disk, a read-only or missing folder, a file in a folder's
    place), here or in the caller's writing, is one InfoviewError naming ``path``; ``path`` keeps what it
    held, and the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp makes 0600, and a writer may have replaced the file (safetensors does): give the result the
        # mode any new file gets, just before it takes its name
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except Exception as exc:
        error = os_error_of(exc)
        if error is None:
            raise
        raise cannot_write(path, error) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def claim_out_dir(out_dir: str | os.PathLike, result: str, overwrite: bool = False) -> Path:
    """Check, before any work, that ``out_dir`` can take a new ``result`` file; return it as a Path.

    A file in the folder's place, or a finished ``result`` already there
    (unless ``overwrite``), is an error naming it: nothing expensive runs
    only to fail at the end, and no finished result is replaced unasked.
    Creates nothing.
    """
    from infoview.errors import InfoviewError

    out = Path(out_dir).expanduser()
    if not str(out_dir).strip():
        raise InfoviewError("out_dir is empty; give out_dir=<folder>")
    if out.exists() and not out.is_dir():
        raise InfoviewError(f"out_dir {out} is a file; give a folder")
    if (out / result).exists() and not overwrite:
        raise InfoviewError(
            f"{out} already holds a finished result ({result}); choose another out_dir, or pass overwrite=true "
            "to replace it"
        )
    parent = next((p for p in (out, *out.parents) if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        raise InfoviewError(f"out_dir {out}: cannot write in {parent}")
    return out
