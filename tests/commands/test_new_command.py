"""Adding a command is one file: the example in docs/architecture.md, dropped into the package, just works."""
from __future__ import annotations

import json

import pytest

import infoview.commands as commands
from infoview.cli import main

@pytest.fixture
def count_command(doc_example_module):
    """The doc's ``count`` command as a module of infoview.commands."""
    doc_example_module(commands, "Adding a command", "count")


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
