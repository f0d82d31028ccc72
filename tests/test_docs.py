"""The Python examples in README.md and docs/*.md run as written."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S))


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: d.name)
def test_python_examples_run(doc, tmp_path):
    # each document in a fresh interpreter: examples may register objectives
    proc = subprocess.run(
        [sys.executable, "-c", python_blocks(doc)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{doc.name} examples failed:\n{proc.stderr[-3000:]}"
