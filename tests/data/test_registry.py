"""The source registry: one grammar, the schemes and kinds there are, the errors, and adding a scheme."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infoview.data import registry
from infoview.data.registry import open_as, register_source, resolve, schemes
from infoview.data.sources import ArraySource, open_source, parse_source
from infoview.errors import ConfigError
from infoview.commands.list_ import sources as list_sources

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in the test are forgotten after it."""
    schemes()  # the built-in schemes are in before the copy
    monkeypatch.setattr(registry._SOURCES, "items", dict(registry._SOURCES.items))


def test_the_schemes_and_their_kinds_are_those_there_were():
    by_kind = {kind: [s.name for s in schemes(kind)] for kind in registry.KINDS}
    assert by_kind == {
        "images": ["digits", "shapes", "cifar10", "cifar100", "stl10", "folder", "coco", "beton"],
        "detection": ["shapes", "coco", "pennfudan"],
        "segmentation": ["shapes", "masks"],
    }
    # every scheme is one module of infoview/data/schemes, which registers each of its kinds
    for s in schemes():
        assert s.opener.__module__.startswith("infoview.data.schemes."), s


def test_one_grammar_the_first_argument_takes_the_extra_colons():
    def args(kind, source):
        return resolve(kind, source)[1]

    assert args("images", "digits") == [] and args("images", " digits ") == []
    assert args("images", "folder:/data/a:b") == ["/data/a:b"]  # one argument: all of the rest
    assert args("images", "coco:/x/images:/x/ann.json") == ["/x/images", "/x/ann.json"]
    assert args("detection", "coco:/a:b/images:/x/ann.json") == ["/a:b/images", "/x/ann.json"]
    assert args("segmentation", "masks:/road") == ["/road"]  # the optional second root
    assert args("segmentation", "masks:/a:b:/m") == ["/a:b", "/m"]
    assert parse_source("folder:/x") == ("folder", "/x") and parse_source("digits") == ("digits", "")


def test_bad_source_strings_are_config_errors_that_say_what_is_expected(tmp_path):
    with pytest.raises(ConfigError, match=r"'digits' takes no argument, got 'digits:x'"):
        open_source("digits:x")
    with pytest.raises(ConfigError, match=r"data source 'folder:' must be folder:<path> \(one subfolder per class"):
        open_source("folder:")
    with pytest.raises(ConfigError, match=r"must be coco:<images folder>:<instances.json>"):
        open_source("coco:/only/one")
    with pytest.raises(ConfigError, match=r"empty data source; expected one of: digits, shapes, cifar10:<root>"):
        open_source("  ")
    with pytest.raises(ConfigError, match=r"unknown data source 'cifar:/x' \(did you mean cifar10:/x\?\)"):
        open_source("cifar:/x")
    with pytest.raises(ConfigError, match=r"'pennfudan' has no images with class labels \(it is a source of "
                                          r"detection\); expected one of: digits, shapes"):
        open_source("pennfudan:/x")
    with pytest.raises(ConfigError, match=r"'masks' has no boxes and instance masks \(it is a source of segmentation\)"):
        open_as("detection", "masks:/x")
    with pytest.raises(ValueError, match="kind must be one of images, detection, segmentation"):
        open_as("video", "digits")


def test_a_toy_scheme_registered_elsewhere_opens_through_open_source(scratch_registry):
    @register_source("toy", kind="images", usage="toy:<n>", help="n black images")
    def open_toy(n: str, *, split: str = "train") -> ArraySource:
        return ArraySource(f"toy:{n}", np.zeros((int(n), 4, 4, 3), np.uint8), [0] * int(n), split=split)

    src = open_source("toy:3", split="test")
    assert len(src) == 3 and src.split == "test" and src.name == "toy:3"
    assert [s.name for s in schemes("images")][-1] == "toy"  # listed after the built-in schemes
    assert any(entry.startswith("toy:<n>") and "n black images" in entry for entry in list_sources())
    with pytest.raises(ValueError, match="'toy' is already registered for images"):
        register_source("toy", kind="images", usage="toy", help="again")(open_toy)
    with pytest.raises(ValueError, match="only these keyword-only options: split, download"):
        register_source("toy2", kind="images", usage="toy2", help="")(lambda *, size: None)
    with pytest.raises(ValueError, match="kind must be one of"):
        register_source("toy3", kind="boxes", usage="toy3", help="")


def test_list_sources_shows_every_scheme_with_its_kinds():
    entries = list_sources()
    assert entries[0].startswith("digits ") and len(entries) == len({s.name for s in schemes()})
    coco = next(e for e in entries if e.startswith("coco:"))
    assert [re.search(r"  (\w+)  ", line).group(1) for line in coco.splitlines()] == ["images", "detection"]
    shapes = next(e for e in entries if e.startswith("shapes "))
    assert "segmentation" in shapes and "detection" in shapes


def test_the_data_layer_imports_nothing_above_it():
    allowed = ("infoview.data", "infoview.errors", "infoview.config", "infoview.utils")
    for path in sorted((REPO / "infoview" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name == "infoview" or name.startswith("infoview."):
                    assert name.startswith(allowed), f"{path.relative_to(REPO)} imports {name}"


def _doc_section_blocks() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Adding a data source", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_worked_example_in_the_architecture_doc_is_one_new_file_plus_its_test(tmp_path):
    """The doc's scheme file, dropped into the schemes package, is found, opened, tested and listed."""
    scheme_file, test_file = _doc_section_blocks()
    assert scheme_file.startswith("# infoview/data/schemes/npz.py") and test_file.startswith("# tests/data/test_npz.py")
    extra = tmp_path / "schemes"
    extra.mkdir()
    (extra / "npz.py").write_text(scheme_file)
    (tmp_path / "test_npz.py").write_text(test_file)
    work = tmp_path / "work"
    work.mkdir()
    script = f"""
import importlib.util, pathlib
import infoview.data.schemes
infoview.data.schemes.__path__.append({str(extra)!r})  # as if npz.py were in infoview/data/schemes/
spec = importlib.util.spec_from_file_location("test_npz", {str(tmp_path / "test_npz.py")!r})
test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test)
test.test_npz(pathlib.Path({str(work)!r}))
from infoview.data.registry import schemes
from infoview.commands.list_ import sources
npz = [s for s in schemes("images") if s.name == "npz"]
assert npz and npz[0].opener.__module__ == "infoview.data.schemes.npz", npz
assert any(entry.startswith("npz:<file>") for entry in sources())
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
