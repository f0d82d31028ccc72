"""What the parts of benchmarks/gpu_check.py share: the checkout, the file names, the usage error, the log."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, MD_NAME, MANIFEST = "gpu_check.json", "gpu_check.md", "data.json"


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def tail(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]
