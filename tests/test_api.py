"""The front door: `import infoview` offers what scripts use (docs/api.md runs its examples: tests/test_docs.py)."""
import subprocess
import sys

import pytest

import infoview
from infoview.commands import build_config
from infoview.errors import ConfigError, InfoviewError


def test_import_infoview_is_light_and_every_offered_name_resolves():
    code = ("import sys, infoview; light = 'torch' not in sys.modules\n"
            "names = [n for n in infoview.__all__ if getattr(infoview, n, None) is None]\n"
            "print(light, names, sorted(set(infoview.__all__) <= set(dir(infoview)) for _ in [0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "[]", "[True]"]


def test_the_offered_names_are_the_package_functions():
    from infoview.backbones.export import export_backbone, load_backbone
    from infoview.objectives import build, cross_view_pairs

    assert infoview.build_objective is build and infoview.cross_view_pairs is cross_view_pairs
    assert infoview.load_backbone is load_backbone and infoview.export_backbone is export_backbone
    with pytest.raises(AttributeError, match="has no attribute 'load_backbones'; it offers .*load_backbone"):
        infoview.load_backbones  # noqa: B018


def test_run_checks_its_keys_before_any_work_with_the_clis_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'.*did you mean 'train.epochs'"):
        infoview.run("pretrain", config="demo", out_dir=str(tmp_path / "x"), train={"epoch": 1})
    with pytest.raises(ConfigError, match="optim.lr"):
        infoview.run("pretrain", "optim.lr=-1", out_dir=str(tmp_path / "x"))
    with pytest.raises(InfoviewError, match="unknown command 'pretrian'; did you mean 'pretrain'"):
        infoview.run("pretrian")
    with pytest.raises(InfoviewError, match="takes its arguments as text"):
        infoview.run("launch", config="demo", out_dir="x")
    assert not (tmp_path / "x").exists()


def test_run_applies_the_preset_then_the_text_arguments_then_the_python_keys():
    _, cfg = build_config("pretrain", ["--config=demo", "train.epochs=3", "optim.lr=0.5"],
                          {"train": {"epochs": 2}, "data.batch_size": 64})
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.batch_size) == (2, 0.5, 64)
    assert (cfg.objective.name, cfg.train.eval_every) == ("ml_cpc", 5)  # the rest is the preset's
