"""Config schemas: each key's help, choices and bounds, checked before any work and shown by --help."""
from __future__ import annotations

import pytest

from infoview import schema
from infoview.cli import main
from infoview.config import parse_overrides, resolve
from infoview.errors import ConfigError
from infoview.schema import Key

TREE = {
    "out_dir": "runs/x",  # a plain leaf: no help, no checks
    "optim": {
        "name": Key("sgd", "the optimiser", choices=("sgd", "adamw")),
        "lr": Key(0.1, "peak learning rate", above=0),
        "clip": Key(None, "gradient norm clip", min=0),
        "beta": Key(0.9, "momentum", min=0, max=1),
    },
    "levels": Key([2, 4], "MI levels in nats", above=0),
}


def _cfg(*overrides):
    cfg = resolve(schema.defaults(TREE), None, parse_overrides(overrides))
    schema.check(cfg, TREE)
    return cfg


def test_defaults_are_plain_and_valid_values_pass():
    assert schema.defaults(TREE) == {"out_dir": "runs/x", "optim": {"name": "sgd", "lr": 0.1, "clip": None,
                                                                     "beta": 0.9}, "levels": [2, 4]}
    cfg = _cfg("optim.name=adamw", "optim.lr=3e-4", "optim.clip=1.0", "optim.beta=1", "levels=[1,8]")
    assert cfg.optim.name == "adamw" and cfg.optim.clip == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.name=lamb", "optim.name must be one of sgd, adamw, got 'lamb' (the optimiser)"),
    ("optim.lr=0", "optim.lr must be positive, got 0.0 (peak learning rate)"),
    ("optim.clip=-1", "optim.clip must be at least 0, got -1"),
    ("optim.beta=1.5", "optim.beta must be in [0, 1], got 1.5 (momentum)"),
    ("levels=[2,-4]", "levels must be a list, each item positive, got [2, -4]"),
])
def test_a_value_outside_its_choices_or_bounds_is_one_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        _cfg(override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nan_is_outside_every_bound():
    assert Key(0.1, above=0).violation(float("nan")) and Key(0.5, min=0, max=1).violation(float("nan"))


def test_help_shows_each_keys_default_help_and_what_it_takes():
    text = schema.describe(TREE)
    lines = text.splitlines()
    assert lines[0] == "  out_dir: runs/x"
    assert lines[1] == "  optim:"
    assert any(line.startswith("    name: sgd ") and line.endswith("# the optimiser [one of sgd, adamw]")
               for line in lines)
    assert any(line.startswith("  levels: [2, 4] ") and line.endswith("# MI levels in nats [positive]") for line in lines)


def test_the_cli_checks_the_schema_before_any_work_and_shows_it_in_help(tmp_path, capsys):
    assert main(["mi-bench", "model.critic=mlp", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("infoview mi-bench: error: model.critic must be one of separable, concat, got 'mlp' "
                   "(separable: g(x)^T h(y); concat: f([x, y]) over all pairs)")
    assert not (tmp_path / "run").exists()
    assert main(["mi-bench", "--help"]) == 0
    assert "batch_size: 64" in capsys.readouterr().out


def test_an_exclusive_upper_bound():
    key = Key([0.9, 0.999], "betas", min=0, below=1)
    assert key.expected() == "in [0, 1)" and key.violation([0.9, 1.0]) and not key.violation([0.0, 0.99])
    assert Key(0.5, above=0, max=1).expected() == "in (0, 1]" and Key(0.5, below=1).expected() == "below 1"


# ---- every command's keys --------------------------------------------------------------------------------


def _leaves(tree, prefix=""):
    """(dotted key, leaf) for every leaf of a DEFAULTS tree, a Key or not (an empty dict is a leaf)."""
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _command_trees():
    from infoview.commands import load_command, names

    return {name: load_command(name).DEFAULTS for name in names() if hasattr(load_command(name), "DEFAULTS")}


def test_every_key_of_every_command_has_one_line_of_help_and_a_default_it_accepts():
    trees = _command_trees()
    assert {"pretrain", "linear", "knn", "detect", "segment", "export", "prepare", "launch", "mi-bench"} <= set(trees)
    assert {"simclr", "moco"} <= set(trees["pretrain"])  # the method sections, with their keys
    for command, tree in trees.items():
        for dotted, leaf in _leaves(tree):
            where = f"infoview {command}: {dotted}"
            assert isinstance(leaf, Key), f"{where} is a plain default, not a schema.Key with help"
            assert leaf.help.strip() and "\n" not in leaf.help and len(leaf.help) <= 90, where
            assert not leaf.violation(leaf.default), f"{where}: its default {leaf.default!r} breaks its own bounds"


def test_the_choices_the_light_command_modules_offer_are_the_work_modules_own():
    """The lists live in modules that import nothing (data/choices.py, training/choices.py), which the work's
    modules and the command modules both import: nothing is copied by hand, and `infoview --help` stays free
    of torch (tests/test_cli.py)."""
    from infoview.commands import _frozen, prepare
    from infoview.data import beton, loader
    from infoview.eval import choices
    from infoview.training import optim

    assert _frozen.LOADER_BACKENDS is loader.BACKENDS and prepare.WRITE_MODES is beton.WRITE_MODES
    assert choices.SCHEDULES is optim.DECAYS  # detect's schedules are training.optim's decays


def test_pretrains_choices_are_the_lists_its_work_checks_against():
    """pretrain's keys offer the lists of light modules (augment/choices.py, models/choices.py,
    pretrain/choices.py, the recipes' registry) that the modules doing the work import: nothing is copied."""
    from infoview.augment import choices as augment_choices, views
    from infoview.augment.recipes import NORMALIZATION, recipe_names
    from infoview.commands import pretrain
    from infoview.models import choices as model_choices, encoder
    from infoview.pretrain import building, choices as pretrain_choices

    assert views.BACKENDS is augment_choices.BACKENDS and encoder.STREAMS is model_choices.STREAMS
    assert building.PRECISIONS is pretrain_choices.PRECISIONS
    keys = pretrain.own_keys()
    assert keys["augment"]["backend"].choices is views.BACKENDS and keys["model"]["streams"].choices is encoder.STREAMS
    assert keys["train"]["precision"].choices is building.PRECISIONS
    assert keys["augment"]["recipe"].choices == tuple(recipe_names())
    assert keys["augment"]["normalize"].choices == tuple(NORMALIZATION)


@pytest.mark.parametrize("args, message", [
    (["pretrain", "train.precision=fp8"], "train.precision must be one of auto, fp32, bf16, fp16, got 'fp8' (autocast"),
    (["pretrain", "optim.betas=[0.9,1.0]"], "optim.betas must be a list, each item in [0, 1), got [0.9, 1.0]"),
    (["pretrain", "method=moco", "moco.momentum_final=1.5"],
     "moco.momentum_final must be in [0, 1] (or null), got 1.5"),
    (["pretrain", "augment.recipe=simclrr"], "augment.recipe must be one of simclr, mocov2, byol, multicrop"),
    (["linear", "backbone=random:resnet18", "data.backend=dali"], "data.backend must be one of auto, ffcv, pytorch"),
    (["knn", "backbone=random:resnet18", "knn.temperature=0"], "knn.temperature must be positive, got 0.0"),
    (["detect", "backbone=random:resnet18", "optim.milestones=[0.5,1.5]"],
     "optim.milestones must be a list, each item in (0, 1], got [0.5, 1.5]"),
    (["segment", "backbone=random:resnet18", "output_stride=4"], "output_stride must be one of 0, 8, 16, 32, got 4"),
    (["prepare", "digits", "OUT", "jpeg_quality=0"], "jpeg_quality must be in [1, 100], got 0"),
])
def test_a_bad_value_is_one_line_naming_key_and_values_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # prepare's OUT, and any out_dir a command would default to, land here
    command, rest = args[0], [a.replace("OUT", str(tmp_path / "x.beton")) for a in args[1:]]
    out_dir = [] if command == "prepare" else [f"out_dir={tmp_path / 'run'}"]
    assert main([command, *rest, *out_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"infoview {command}: error: ") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_launch_checks_its_own_keys_the_same_way(tmp_path, capsys):
    assert main(["launch", "mi-bench", "launch.timeout_min=0", "launch.dry_run=true", f"launch.folder={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("infoview launch: error: launch.timeout_min must be at least 1, got 0 "
                   "(the job's time limit in minutes)")
    assert not any(tmp_path.iterdir())
