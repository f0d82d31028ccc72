import subprocess
import sys

import pytest

from infoview import commands
from infoview.cli import main
from infoview.commands import Command, load_command, names


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert len(names()) == 11
    for name in names():
        assert f"  {name}" in out and load_command(name).COMMAND.help in out


def test_console_script_help_does_not_import_torch():
    code = "import sys; from infoview.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


@pytest.mark.parametrize("args", [["--help"], ["pretrain", "--help"], ["distill", "--help"], ["list", "methods"],
                                  ["list", "objectives"], ["list", "sources"], ["list", "recipes"]])
def test_help_and_lists_import_no_torch(args):
    """What they show is read from the plug-in files (infoview.utils.registry), none of which is imported: that
    is what keeps them at about 0.3 to 0.5 s on a 2-core CPU, against 3 to 4.5 s with torch (the times are not
    asserted here: a timed test fails on a busy machine)."""
    code = "import sys; from infoview.cli import main; main(sys.argv[1:]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False", f"infoview {' '.join(args)} imported torch"


def test_unknown_command_suggests_nearest(capsys):
    assert main(["mi-bnch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'mi-bnch'" in err and "did you mean 'mi-bench'" in err


def test_command_help_shows_keys(capsys):
    assert main(["mi-bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "steps_per_level" in out and "usage: infoview mi-bench" in out


def test_unknown_key_is_a_one_line_error(capsys):
    assert main(["mi-bench", "steps_per_lvl=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "did you mean 'train.steps_per_level'" in err


def test_missing_config_file(capsys, tmp_path):
    assert main(["mi-bench", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err


def test_stray_positional_and_flag_are_errors(capsys):
    assert main(["mi-bench", "extra"]) == 2
    assert "positional" in capsys.readouterr().err
    assert main(["mi-bench", "--fast"]) == 2
    assert "unknown option --fast" in capsys.readouterr().err


def test_positional_arguments_fill_declared_keys(monkeypatch):
    class Fake:
        DEFAULTS = {"src": "", "out": "", "overwrite": False}
        COMMAND = Command(help="a fake", positional=("src", "out"))

    from infoview.utils.registry import Entry

    fake = Entry("fake", "", "fake", {"help": "a fake"}, "fake", obj=Fake)  # registered, and loaded already
    monkeypatch.setattr(commands._COMMANDS, "items", {**commands._COMMANDS.items, "fake": fake})
    _, cfg = commands.build_config("fake", ["digits", "/tmp/o.beton", "overwrite=true"])
    assert (cfg.src, cfg.out, cfg.overwrite) == ("digits", "/tmp/o.beton", True)
    with pytest.raises(Exception, match="needs OUT"):
        commands.build_config("fake", ["digits"])


def test_help_and_list_name_what_a_config_may_use(capsys):
    assert main(["help", "knn"]) == 0  # what `infoview knn --help` prints, not the general usage
    assert "usage: infoview knn" in capsys.readouterr().out
    assert main(["help", "pretrain"]) == 0
    assert "usage: infoview pretrain" in capsys.readouterr().out
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "simclr_mlcpc_cifar10" in out and "SimCLR with alpha-ML-CPC" in out
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    assert "ml_cpc" in out and "alpha=1.0" in out and "ceiling log(m / that alpha)" in out
    assert main(["list", "methods"]) == 0
    methods = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert methods[:2] == ["simclr", "moco"] and {"moco_v3", "ir", "cmc", "la"} <= set(methods)
    assert main(["list", "archs", "resnet1?"]) == 0
    assert "resnet18" in capsys.readouterr().out.split()
    assert main(["list", "archz"]) == 2
    assert "did you mean 'archs'" in capsys.readouterr().err
