"""The install make does (`pip install -e .`) imports the project's package from any folder, also from the one
that holds a clone named infoview, whose own folder then sits in the working directory; a wheel holds the
presets, so that a plain install pretrains with `--config demo` from any folder."""
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


def _venv(root: Path, *install: str) -> Path:
    """A venv with ``pip install <install>`` done in it, its dependencies borrowed from the running environment
    through a .pth line (nothing is downloaded: --no-index, --no-deps)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    _pip("--python", str(python), "install", *install)
    return python


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--no-build-isolation", "--no-index"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _editable_venv(root: Path) -> Path:
    """A venv with this project installed as make installs it (editable)."""
    return _venv(root, "-e", str(REPO))


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


def test_a_wheel_holds_the_presets_and_its_install_pretrains_the_demo_from_any_folder(tmp_path):
    src = tmp_path / "src"  # what a wheel is built from, copied: the build writes build/ and *.egg-info there
    shutil.copytree(REPO / "infoview", src / "infoview", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    _pip("wheel", "--wheel-dir", str(tmp_path / "dist"), str(src))
    wheel = next((tmp_path / "dist").glob("infoview-*.whl"))
    python = _venv(tmp_path / "venv", str(wheel))
    work = tmp_path / "work"  # any folder: no configs/ and no clone here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    infoview = python.parent / "infoview"
    proc = subprocess.run([str(infoview), "pretrain", "--config", "demo", "out_dir=run", "data.batch_size=16",
                           "train.max_steps=1", "train.eval_every=0", "train.progress=false"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "run" / "checkpoints" / "last.pt").is_file()
    assert "objective:\n  name: ml_cpc" in (work / "run" / "config.yaml").read_text(encoding="utf-8")  # the preset's
    proc = subprocess.run([str(python), "-c", "import infoview; print(infoview.__file__)"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert Path(proc.stdout.strip()).is_relative_to(tmp_path / "venv")  # the wheel's package, not the clone's
