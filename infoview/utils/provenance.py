"""Which code and which command made an output."""
from __future__ import annotations

import datetime as _dt
import functools
import subprocess
import sys
from pathlib import Path

import infoview

ROOT = Path(infoview.__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree, with ``-dirty`` when it has changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    return {
        "infoview_version": infoview.__version__,
        "git_commit": git_commit(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
