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
    assert main(["mi-bench", "critic=mlp", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("infoview mi-bench: error: critic must be one of separable, concat, got 'mlp' "
                   "(separable: g(x)^T h(y); concat: f([x, y]) over all pairs)")
    assert not (tmp_path / "run").exists()
    assert main(["mi-bench", "--help"]) == 0
    assert "batch_size: 64" in capsys.readouterr().out
