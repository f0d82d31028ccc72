"""Which code and which command made an output."""
from __future__ import annotations

import datetime as _dt
import functools
import subprocess
import sys
from pathlib import Path

from infoview.version import __version__

# From this file, not from ``infoview.__file__``: that is None when ``infoview`` was imported as a namespace
# package, which a folder named infoview in the working directory (a clone's own folder) once made it.
ROOT = Path(__file__).resolve().parents[2]


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


def version() -> str:
    """infoview's version (:mod:`infoview.version`: read also when ``infoview`` was imported as a namespace
    package)."""
    return __version__


def provenance() -> dict:
    return {
        "infoview_version": version(),
        "git_commit": git_commit(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
