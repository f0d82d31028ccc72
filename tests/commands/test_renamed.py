"""One vocabulary: optim.* is the optimiser in every command, and a key one method uses lives in its section.
Keys that moved keep working under their old names, read as the new ones with a one-line note."""
from __future__ import annotations

import pytest
import yaml

from infoview import schema
from infoview.cli import main
from infoview.commands import build_config, load_command, names
from infoview.config import flatten


def _commands_with_keys():
    return [n for n in names() if hasattr(load_command(n), "DEFAULTS") or n == "pretrain"]


@pytest.mark.parametrize("name", _commands_with_keys())
def test_every_renamed_key_names_a_key_of_today_and_its_old_name_is_gone(name):
    module = load_command(name)
    keys = set(flatten(schema.defaults(module.DEFAULTS)))
    for old, new in module.COMMAND.renamed.items():
        assert new in keys, f"{name}: {old} is renamed to {new}, which is no key"
        assert old not in keys, f"{name}: {old} is renamed and still a key"


@pytest.mark.parametrize("name", _commands_with_keys())
def test_the_optimisers_keys_are_optim_in_every_command(name):
    keys = flatten(schema.defaults(load_command(name).DEFAULTS))
    optimiser = ("lr", "optimizer", "momentum", "weight_decay", "warmup_steps", "milestones", "clip_grad")
    assert [k for k in keys if k.startswith("train.") and k.split(".", 1)[1] in optimiser] == []


@pytest.mark.parametrize("name, old, new", [
    ("detect", {"optimizer": "adamw", "lr": 0.02, "momentum": 0.8, "weight_decay": 0.0, "warmup_steps": 5,
                "schedule": "cosine", "milestones": [0.5], "clip_grad": 1.0, "epochs": 2},
     {"name": "adamw", "lr": 0.02, "momentum": 0.8, "weight_decay": 0.0, "warmup_steps": 5, "schedule": "cosine",
      "milestones": [0.5], "clip_grad": 1.0}),
    ("segment", {"optimizer": "adamw", "lr": 0.001, "momentum": 0.5, "weight_decay": 0.01, "epochs": 2},
     {"name": "adamw", "lr": 0.001, "momentum": 0.5, "weight_decay": 0.01}),
    ("linear", {"lr": 0.5, "weight_decay": 0.001, "epochs": 2}, {"lr": 0.5, "weight_decay": 0.001}),
])
def test_a_config_file_written_by_main_still_loads_with_a_note_per_old_name(name, old, new, tmp_path, capsys):
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump({"backbone": "random:resnet18", "train": old}))  # main's config.yaml: train.*
    _, cfg = build_config(name, ["--config", str(f)])
    assert {k: cfg.optim[k] for k in new} == new and cfg.train.epochs == 2
    notes = [line for line in capsys.readouterr().err.splitlines() if " is now optim." in line]
    assert len(notes) == len(new) and all(line.startswith(f"infoview {name}: train.") for line in notes)


def test_an_old_name_on_the_command_line_is_a_note_and_both_names_are_an_error(tmp_path, capsys):
    _, cfg = build_config("detect", ["backbone=random:resnet18", "train.lr=0.05", "train.optimizer=adamw"])
    assert (cfg.optim.lr, cfg.optim.name) == (0.05, "adamw")
    err = capsys.readouterr().err
    assert "train.lr is now optim.lr (on the command line); read as optim.lr" in err
    assert "train.optimizer is now optim.name (on the command line); read as optim.name" in err
    assert main(["segment", "backbone=random:resnet18", "train.lr=0.1", "optim.lr=0.2", f"out_dir={tmp_path}"]) == 2
    assert "train.lr and optim.lr are one key (on the command line)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
