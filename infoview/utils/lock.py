"""One run holds one folder: a lock that names its holder, and is free again once its process has ended.

``with hold_folder(out_dir, "pretrain"):`` makes the folder (and the ones above it that are missing), then
takes ``<out_dir>/.infoview.lock``: an exclusive ``flock`` on that file, which holds one line of JSON naming the
holder (command, host, pid, start). A second run into the same folder is refused with one line naming the
holder, so that two runs never write one folder's checkpoints and results over each other.

The lock belongs to the holder's process (a forked child, such as a DataLoader worker, closes its copy): the
kernel drops it when the process ends in any way (``kill -9`` included), so the folder is reclaimed by the next run with nothing to clean up, and a job that SLURM
requeues, on the same node or another one, takes its folder back once its previous run is gone. The file is
removed when the run ends; one left by a killed run is taken over. On a shared file system the lock is as good
as its ``flock`` (NFS: byte-range locks across hosts). Where a file system takes no lock at all, the run goes
on with a one-line note that two runs there would not be caught.

Under DDP rank 0 holds the lock (``holder=`` the rank's ``is_main``); when rank 0 is refused it ends with
the error, and the launcher (``torchrun``, ``infoview launch``'s ``srun --kill-on-bad-exit``) ends the others.

On leaving, folders that :func:`hold_folder` made and that are still empty are removed again: a run that
failed before writing anything leaves no half-started folder for a rerun to trip over.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from infoview.errors import InfoviewError

LOCK_NAME = ".infoview.lock"
_HELD: list[tuple[int | None, Path, list[Path]]] = []  # (descriptor, lock file, folders made) of the holds open


def _let_go(fd: int | None, path: Path, made: list[Path]) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)
    remove_if_empty(made)


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker): close its copies of the lock descriptors, so that the lock
    belongs to the run's own process alone and goes with it (a killed run's workers would otherwise hold it
    until they notice); the child lets go of nothing else."""
    for fd, _, _ in _HELD:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def release_all() -> None:
    """Let go of every folder this process holds, as leaving each hold would: for a process about to end at
    once (``os._exit``, a Ctrl-C that cannot wait for the main thread), which runs no ``finally``."""
    while _HELD:
        _let_go(*_HELD.pop())


def make_folder(folder: Path) -> list[Path]:
    """Make ``folder`` and the missing folders above it; return those made, deepest first. Errors are one line
    naming the folder: a file in its place (or above it), no permission, a read-only or full file system."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InfoviewError(f"out_dir {folder}: {blocker} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfoviewError(f"out_dir {folder}: cannot make the folder ({exc.strerror or exc})") from None
    return missing


def remove_new_entries(folder: Path, before: set[str]) -> None:
    """Remove what was added to ``folder`` since its entries were ``before`` (names), the lock aside."""
    for entry in folder.iterdir():
        if entry.name in before or entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _holder(command: str) -> dict:
    return {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
            "start": time.strftime("%Y-%m-%d %H:%M:%S"), "slurm_job": os.environ.get("SLURM_JOB_ID", "")}


def describe_holder(text: str) -> str:
    """``infoview pretrain (pid 12, host h, since 2026-01-01 10:00:00)`` from a lock file's line."""
    try:
        h = json.loads(text)
        job = f", SLURM job {h['slurm_job']}" if h.get("slurm_job") else ""
        return f"infoview {h['command']} (pid {h['pid']} on host {h['host']}{job}, since {h['start']})"
    except (ValueError, TypeError, KeyError):
        return "another run (it has not written its name yet)"


def _lock(path: Path, folder: Path, command: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock, or None where the file system takes none."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InfoviewError(f"out_dir {folder}: cannot write there ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                print(f"infoview {command}: note: {folder}'s file system takes no lock ({exc.strerror}); a second "
                      "run into this folder would not be refused", file=sys.stderr, flush=True)
                return None
            held_by = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise InfoviewError(
                f"out_dir {folder} is in use by {describe_holder(held_by)}: one run per folder; wait for it to "
                "end, or choose another out_dir (the lock goes with its process)") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder ended and removed the file between our open and our lock: lock the new one
    raise InfoviewError(f"out_dir {folder}: could not take {path} (other runs keep starting and ending there)")


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, command: str, *, holder: bool = True) -> Iterator[Path]:
    """Hold ``folder`` for one run of ``command`` (see the module docstring); ``holder=False`` (a DDP rank
    other than 0) only yields the folder."""
    folder = Path(folder).expanduser()
    if not str(folder).strip():
        raise InfoviewError("out_dir is empty; give out_dir=<folder>")
    if not holder:
        yield folder
        return
    made = make_folder(folder)
    path = folder / LOCK_NAME
    try:
        fd = _lock(path, folder, command)
    except BaseException:
        remove_if_empty(made)
        raise
    hold = (fd, path, made)
    _HELD.append(hold)
    try:
        if fd is not None:
            line = (json.dumps(_holder(command)) + "\n").encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, line, 0)
            except OSError as exc:
                raise InfoviewError(f"out_dir {folder}: cannot write {path} ({exc.strerror or exc})") from None
        yield folder
    finally:
        if hold in _HELD:  # (release_all may have let go of it already)
            _HELD.remove(hold)
            _let_go(*hold)


@contextlib.contextmanager
def hold_result_folder(out_dir: str | os.PathLike, result: str, overwrite: bool, command: str, *,
                       holder: bool = True) -> Iterator[Path]:
    """An evaluator's folder: checked as :func:`infoview.utils.io.claim_out_dir` does (no finished ``result``
    there unless ``overwrite``), held for this run, and checked again once held (a run that finished there in
    between is not overwritten)."""
    from infoview.utils.io import claim_out_dir

    out = claim_out_dir(out_dir, result, overwrite)
    with hold_folder(out, command, holder=holder):
        if holder:
            claim_out_dir(out, result, overwrite)
        yield out
