"""The install make does (`pip install -e .`) imports the project's package from any folder, also from the one
that holds a clone named infoview, whose own folder then sits in the working directory."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _editable_venv(root: Path) -> Path:
    """A venv with this project installed as make installs it (editable), its dependencies borrowed from the
    running environment through a .pth line (nothing is downloaded: --no-index, --no-deps)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                           "--disable-pip-version-check", "--no-deps", "--no-build-isolation", "--no-index", "-e",
                           str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def test_the_readme_example_runs_beside_a_clone_named_infoview(tmp_path):
    python = _editable_venv(tmp_path / "venv")
    here = tmp_path / "work"  # the folder a user cloned into: it holds the clone's own folder, infoview/
    shutil.copytree(REPO, here / "infoview", symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info"))
    example = "\n".join(re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S))
    (here / "example.py").write_text(example, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, nothing else
    proc = subprocess.run([str(python), "example.py"], cwd=here, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'ml_cpc'" in proc.stdout
    # `python -c` puts the working directory first on sys.path too; the package is the project's, not the clone's
    proc = subprocess.run([str(python), "-c", "import infoview; print(infoview.__file__, infoview.__version__)"],
                          cwd=here, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == str(REPO / "infoview" / "__init__.py")


def test_provenance_does_not_need_the_package_file(tmp_path):
    """What an install that let a clone's folder shadow the package gave: ``infoview`` a namespace package
    (``__file__`` None, no ``__version__``) whose modules still load. Provenance is still written."""
    code = (
        "import sys, types\n"
        "ns = types.ModuleType('infoview'); ns.__file__ = None\n"
        f"ns.__path__ = [{str(REPO / 'infoview')!r}]; sys.modules['infoview'] = ns\n"
        "from infoview.utils.provenance import ROOT, provenance\n"
        "p = provenance(); print(ROOT); print(p['infoview_version'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root, version = proc.stdout.split()
    assert Path(root) == REPO and version
