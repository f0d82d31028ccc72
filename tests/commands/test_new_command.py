"""Adding a command is one file: the example in docs/architecture.md, dropped into the package, just works."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import infoview.commands as commands
from infoview.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _example() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Adding a command", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def count_command(tmp_path, monkeypatch):
    """The doc's ``count`` command as a module of infoview.commands (a temp folder on the package's path)."""
    folder = tmp_path / "more_commands"
    folder.mkdir()
    (folder / "count.py").write_text(_example(), encoding="utf-8")
    monkeypatch.setattr(commands, "__path__", [*commands.__path__, str(folder)])
    yield
    import sys

    sys.modules.pop("infoview.commands.count", None)


def test_the_documented_command_is_listed_helped_and_run(count_command, capsys):
    assert "count" in commands.names()
    assert main(["--help"]) == 0
    assert "Count the images of a data source." in capsys.readouterr().out
    assert main(["count", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: infoview count SRC" in out and "split: train" in out
    assert main(["count", "digits", "split=test"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"source": "digits", "split": "test", "images": 360}


def test_the_documented_command_is_launched_as_one_process(count_command, capsys, tmp_path):
    assert main(["launch", "count", "digits", "launch.tasks_per_node=2", "launch.dry_run=true",
                 f"launch.folder={tmp_path}"]) == 2
    assert "'count' runs as one process on one device" in capsys.readouterr().err
