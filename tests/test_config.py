import pytest
import yaml

from infoview.config import parse_overrides, read_yaml, resolve, save_config
from infoview.errors import ConfigError

DEFAULTS = {
    "out_dir": "runs/x",
    "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
    "train": {"epochs": 10, "device": "auto", "resume": False},
    "levels": [2, 4],
    "objective": {"name": "infonce"},
}


def test_overrides_are_typed_and_dotted():
    cfg = resolve(DEFAULTS, None, parse_overrides(["optim.lr=0.5", "train.epochs=3", "train.resume=true"]))
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.train.resume is True
    assert cfg.optim.name == "sgd"  # untouched defaults stay


def test_int_key_accepts_float_spelling_of_integer_but_not_text():
    assert resolve(DEFAULTS, None, {"train.epochs": 4.0}).train.epochs == 4
    with pytest.raises(ConfigError, match="train.epochs.*integer"):
        resolve(DEFAULTS, None, parse_overrides(["train.epochs=ten"]))
    with pytest.raises(ConfigError, match="optim.lr.*number"):
        resolve(DEFAULTS, None, parse_overrides(["optim.lr=fast"]))


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        resolve(DEFAULTS, None, parse_overrides(["optim.lrr=1"]))
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        resolve(DEFAULTS, None, parse_overrides(["epochs=1"]))


def test_file_then_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.3\n  name: adamw\ntrain:\n  epochs: 5\n")
    cfg = resolve(DEFAULTS, read_yaml(f), parse_overrides(["optim.lr=0.01"]), source=str(f))
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.epochs) == ("adamw", 0.01, 5)


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  learning_rate: 0.3\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*c.yaml"):
        resolve(DEFAULTS, read_yaml(f), None, source=str(f))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(scalar)


def test_presets_ship_in_the_package_and_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the preset comes from the package
    assert read_yaml("demo")["objective"]["name"] == "ml_cpc"
    # the presets' folder before they moved into the package: the error names the preset to give instead
    with pytest.raises(ConfigError, match=r"'configs/demo.yaml' does not exist. The preset of that name is "
                                          r"--config demo\. Presets: .*demo"):
        read_yaml("configs/demo.yaml")


def test_open_section_takes_any_key():
    cfg = resolve(DEFAULTS, None, parse_overrides(["objective.alpha=0.1"]), open_sections=["objective"])
    assert cfg.objective.alpha == 0.1
    with pytest.raises(ConfigError):
        resolve(DEFAULTS, None, parse_overrides(["objective.alpha=0.1"]))


def test_list_values_from_comma_text():
    assert list(resolve(DEFAULTS, None, parse_overrides(["levels=2,4,6"])).levels) == [2, 4, 6]
    assert list(resolve(DEFAULTS, None, parse_overrides(["levels=[1,3]"])).levels) == [1, 3]


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = resolve(DEFAULTS, None, parse_overrides(["optim.lr=0.02"]))
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert "git_commit" in saved["_provenance"]
    again = resolve(DEFAULTS, read_yaml(path), None)
    assert again == cfg
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_nearest_prefers_a_unique_prefix():
    from infoview.config import nearest

    assert nearest("tau", ["beta", "tau_plus", "temperature"]) == "tau_plus"
    assert nearest("epoch", ["train.epochs", "optim.lr"]) == "train.epochs"


def test_exponent_without_dot_is_a_number():
    assert parse_overrides(["alpha=1e-4", "name=e5", "x=nan"]) == {"alpha": 1e-4, "name": "e5", "x": "nan"}


def test_open_sections_do_not_leak_into_the_defaults():
    defaults = {"model": {"arch": "resnet18", "kwargs": {}}}
    first = resolve(defaults, None, {"model.kwargs.channels": [8, 16]}, open_sections=("model.kwargs",))
    assert first.model.kwargs.channels == [8, 16]
    assert defaults == {"model": {"arch": "resnet18", "kwargs": {}}}
    assert resolve(defaults, None, {}, open_sections=("model.kwargs",)).model.kwargs == {}  # a second run is clean


# ---- what a user ran into: sections that cannot be switched, keys that cannot go --------------------------

OPEN = ("objective", "model.kwargs")
PRESET = {"objective": {"name": "ml_cpc", "alpha": 0.1}, "model": {"arch": "resnet18", "kwargs": {"channels": [8]}}}
WITH_MODEL = {**DEFAULTS, "model": {"arch": "resnet50", "kwargs": {}}}
RESETS = {"objective.name": "objective", "model.arch": "model.kwargs"}


def test_switching_a_presets_objective_starts_its_section_afresh_and_says_so():
    notes = []
    cfg = resolve(WITH_MODEL, PRESET, parse_overrides(["objective.name=ring", "objective.outer=0.2"]),
                  open_sections=OPEN, resets=RESETS, notes=notes)
    assert dict(cfg.objective) == {"name": "ring", "outer": 0.2}  # no alpha from the preset
    assert notes == ["objective.name=ring (on the command line) starts objective afresh: dropped objective.alpha"]
    same = resolve(WITH_MODEL, PRESET, parse_overrides(["objective.name=ml_cpc"]), open_sections=OPEN, resets=RESETS)
    assert dict(same.objective) == {"name": "ml_cpc", "alpha": 0.1}  # the same name keeps its keys


def test_switching_the_architecture_drops_the_old_ones_kwargs():
    cfg = resolve(WITH_MODEL, PRESET, parse_overrides(["model.arch=vit_small_patch16_224"]), open_sections=OPEN,
                  resets=RESETS)
    assert cfg.model.arch == "vit_small_patch16_224" and dict(cfg.model.kwargs) == {}


def test_keys_can_be_removed_from_the_command_line():
    from infoview.config import DELETE

    cfg = resolve(WITH_MODEL, PRESET, {"objective.alpha": DELETE, "optim.lr": DELETE}, open_sections=OPEN)
    assert dict(cfg.objective) == {"name": "ml_cpc"} and cfg.optim.lr == 0.1  # a fixed key: its default
    cfg = resolve(WITH_MODEL, PRESET, parse_overrides(["objective.alpha=null", "model.kwargs={}"]), open_sections=OPEN)
    assert dict(cfg.objective) == {"name": "ml_cpc"} and dict(cfg.model.kwargs) == {}
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        resolve(WITH_MODEL, None, {"optim.lrr": DELETE})


def test_duplicate_keys_in_a_yaml_file_are_an_error(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("optim:\n  lr: 0.3\n  name: adamw\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"dup.yaml': key 'lr' appears twice \(lines 2 and 4\)"):
        read_yaml(f)


def test_unknown_key_error_lists_the_nearby_keys_not_all_of_them():
    many = {**DEFAULTS, "data": {f"key{i}": i for i in range(60)}}
    with pytest.raises(ConfigError) as err:
        resolve(many, None, parse_overrides(["optim.lrr=1"]))
    msg = str(err.value)
    assert "Nearby keys: optim.lr, optim.name, optim.weight_decay." in msg and "data.key5" not in msg
    assert "`--help` lists all 69 keys" in msg


def test_the_command_line_takes_tilde_keys(tmp_path, capsys):
    from infoview.commands import build_config

    _, cfg = build_config("pretrain", ["--config", "demo", "~objective.alpha", f"out_dir={tmp_path}"])
    assert dict(cfg.objective) == {"name": "ml_cpc"}
    _, cfg = build_config("pretrain", ["--config", "demo", "model.arch=resnet34", f"out_dir={tmp_path}"])
    assert dict(cfg.model.kwargs) == {}
    assert "model.arch=resnet34 (on the command line) starts model.kwargs afresh: dropped model.kwargs.channels" \
        in capsys.readouterr().err


@pytest.mark.parametrize("clear", ["model.kwargs={}", "~model.kwargs", "model.kwargs=null"])
def test_the_command_line_empties_a_presets_model_kwargs(clear, tmp_path):
    from infoview.commands import build_config

    _, cfg = build_config("pretrain", ["--config", "demo", f"out_dir={tmp_path}"])
    assert dict(cfg.model.kwargs) == {"channels": [16, 32, 64, 128]}  # the preset's
    _, cfg = build_config("pretrain", ["--config", "demo", clear, f"out_dir={tmp_path}"])
    assert dict(cfg.model.kwargs) == {} and cfg.model.arch == "resnet18" and cfg.objective.alpha == 0.1


def _alias_bomb() -> str:
    """The 'billion laughs' of YAML: nine levels of nine aliases, under 1 KB, 9**9 values once expanded (under
    model.kwargs, which takes any key, so that nothing else stops it first)."""
    lines = ['a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "model:\n  kwargs:\n" + "".join(f"    {line}\n" for line in lines)


def test_a_yaml_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    import subprocess
    import sys
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert bomb.stat().st_size < 1024
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml': its aliases expand the value at line \d+ past 100,000"):
        read_yaml(bomb)
    assert time.perf_counter() - start < 0.2
    loop = tmp_path / "loop.yaml"
    loop.write_text("optim: &a {name: sgd, again: *a}\n")
    with pytest.raises(ConfigError, match="refers to a value that holds it"):
        read_yaml(loop)
    with pytest.raises(ConfigError, match="its aliases expand"):  # the same bomb as one value on the command line
        parse_overrides(["model.kwargs={" + ", ".join(_alias_bomb().strip().splitlines()[2:]) + "}"])
    # the whole command: one line, exit 2, at once (on main it hung with no output)
    run = subprocess.run([sys.executable, "-m", "infoview", "pretrain", "--config", str(bomb)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "alias bomb" in run.stderr


def test_a_presets_out_dir_is_named_when_the_command_line_gives_none(capsys):
    from infoview.commands import build_config

    # `--config demo` alone writes into make demo's runs/demo: say so, before anything runs
    _, cfg = build_config("pretrain", ["--config", "demo"])
    err = capsys.readouterr().err
    assert cfg.out_dir == "runs/demo" and "out_dir=runs/demo comes from --config demo" in err
    assert "give out_dir=<folder> for a new one" in err
    build_config("pretrain", ["--config", "demo", "out_dir=runs/mine"])
    assert "out_dir" not in capsys.readouterr().err


def test_a_renamed_key_is_read_under_its_new_name_with_a_note_from_a_file_or_the_command_line(tmp_path):
    renamed = {"train.lr": "optim.lr"}
    f = tmp_path / "old.yaml"
    f.write_text("train:\n  lr: 0.02\n  epochs: 3\n")  # as a config of an earlier version holds it
    notes: list[str] = []
    cfg = resolve(DEFAULTS, read_yaml(f), None, source=str(f), notes=notes, renamed=renamed)
    assert (cfg.optim.lr, cfg.train.epochs) == (0.02, 3) and "lr" not in cfg.train
    assert notes == [f"train.lr is now optim.lr (in {f}); read as optim.lr"]
    notes.clear()
    cfg = resolve(DEFAULTS, None, {"train": {"lr": 0.5}}, notes=notes, renamed=renamed)  # a section as a dict
    assert cfg.optim.lr == 0.5 and notes == ["train.lr is now optim.lr (on the command line); read as optim.lr"]
    with pytest.raises(ConfigError, match="train.lr and optim.lr are one key .*give optim.lr only"):
        resolve(DEFAULTS, None, parse_overrides(["train.lr=0.1", "optim.lr=0.2"]), renamed=renamed)
