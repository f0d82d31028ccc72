"""Adding a method is one file: the example in docs/architecture.md registers, lists, checks its keys and trains."""
from __future__ import annotations

import importlib
import json
import re

import pytest

import infoview.pretrain.methods as methods
from infoview.cli import main
from infoview.pretrain.methods import base

@pytest.fixture
def oneway(doc_example_module, monkeypatch):
    """The doc's ``oneway`` method as a module of infoview.pretrain.methods, registered for one test."""
    monkeypatch.setattr(base._METHODS, "items", dict(base._METHODS.items))
    importlib.import_module(doc_example_module(methods, "Adding a method", "oneway"))


def test_the_documented_method_is_listed_with_its_keys(oneway, capsys):
    assert main(["list", "methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert names[:2] == ["simclr", "moco"] and names[-1] == "oneway"  # in registration order, the new one last
    assert main(["pretrain", "--help"]) == 0
    assert re.search(r"\n  oneway:\n    temperature: 0.2\n", capsys.readouterr().out)


def test_the_documented_method_trains_and_certifies(oneway, tiny, tmp_path, capsys):
    assert main(["pretrain", *tiny, "method=oneway", "objective.name=ml_cpc", "train.max_steps=2",
                 f"out_dir={tmp_path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["mi"] is not None and result["mi"] <= result["mi_ceiling"]  # a bound


def test_its_view_count_and_other_methods_keys_are_checked_before_any_step(oneway, tiny, tmp_path, capsys):
    assert main(["pretrain", *tiny, "method=oneway", "augment.num_views=3", f"out_dir={tmp_path / 'a'}"]) == 2
    assert "method=oneway takes augment.num_views=2" in capsys.readouterr().err
    assert main(["pretrain", *tiny, "method=oneway", "moco.queue_size=64", f"out_dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "moco.queue_size=64 configures method=moco, and this run is method=oneway" in err
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_a_method_without_a_bound_reports_none_instead_of_inventing_one(oneway, tiny, tmp_path, capsys):
    """A BYOL-like method sets certifies = False: its mi is blank in metrics.csv and null in pretrain.json."""
    import csv

    from infoview.pretrain.methods import get_method, register_method

    register_method("nobound")(type("NoBound", (get_method("oneway"),), {"certifies": False}))
    assert main(["pretrain", *tiny, "method=nobound", "train.max_steps=2", "train.log_every=1",
                 f"out_dir={tmp_path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["mi"] is None and result["loss"] is not None
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"] and all(r["mi"] == "" and r["loss"] for r in rows)
