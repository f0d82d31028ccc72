"""What a method's config may say: one temperature, and a predictor only where one is built."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from infoview.cli import main
from infoview.commands import build_config
from infoview.errors import ConfigError
from infoview.pretrain.building import build_objective
from infoview.pretrain.methods import available_methods, get_method
from infoview.models import predictor
from infoview.pretrain.methods.base import check_method_sections, predictor_from_config


def pretrain_config(*overrides: str):
    return build_config("pretrain", list(overrides))[1]


@pytest.mark.parametrize("objective", ["hard_negative", "debiased"])
def test_the_method_owns_the_temperature_and_a_second_one_that_disagrees_is_refused(objective):
    # HCL's and DCL's floor K exp(-1/t) takes the temperature the method divided the scores by
    cfg = pretrain_config("method=moco", "moco.temperature=0.1", f"objective.name={objective}")
    assert build_objective(cfg).temperature == 0.1
    same = pretrain_config("method=moco", "moco.temperature=0.1", f"objective.name={objective}",
                           "objective.temperature=0.1")
    assert build_objective(same).temperature == 0.1  # saying the same twice is harmless
    other = pretrain_config("method=moco", "moco.temperature=0.1", f"objective.name={objective}",
                            "objective.temperature=0.5")
    with pytest.raises(ConfigError, match=r"objective.temperature=0.5 and moco.temperature=0.1 disagree.*set "
                                          r"moco.temperature only"):
        build_objective(other)


def test_a_temperature_conflict_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "data.source=digits", "objective.name=hard_negative", "objective.temperature=0.5",
                 f"out_dir={out}", "train.max_steps=1", "train.progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "objective.temperature=0.5 and simclr.temperature=0.2 disagree" in err
    assert not out.exists()


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "moco"])  # every method but moco
def test_a_predictor_is_refused_by_every_method_that_builds_none(method):
    # moco's predictor is moco.pred_hidden (model.pred_hidden on main): a key of moco's section
    cfg = pretrain_config(f"method={method}", "moco.pred_hidden=64")
    with pytest.raises(ConfigError) as err:
        check_method_sections(cfg)
    message = str(err.value)
    assert message.startswith("moco.pred_hidden=64 configures method=moco")
    assert f"this run is method={method}" in message


def test_the_predictors_name_on_main_is_read_as_moco_pred_hidden_with_a_note(capsys):
    cfg = pretrain_config("method=moco", "model.pred_hidden=64")
    assert cfg.moco.pred_hidden == 64 and "pred_hidden" not in cfg.model
    assert ("model.pred_hidden is now moco.pred_hidden (on the command line); read as moco.pred_hidden"
            in capsys.readouterr().err)
    head = predictor_from_config(cfg.moco.pred_hidden, 16)
    assert [p.shape for p in head.parameters()] == [p.shape for p in predictor(16, 64).parameters()]
    assert predictor_from_config(pretrain_config("method=moco").moco.pred_hidden, 16) is None  # 0: none


def test_crd_with_no_weight_on_either_loss_is_refused_before_the_teacher_loads():
    cfg = pretrain_config("method=crd", "crd.teacher=random:resnet18", "crd.weight=0")
    with pytest.raises(ConfigError, match="crd.weight=0 and crd.ce_weight=0 train nothing"):
        get_method("crd").from_config(cfg, SimpleNamespace(feature_dim=8), None, 10, num_samples=100)


def test_a_checkpoint_whose_config_has_mains_model_pred_hidden_resumes_with_a_note(tiny, tmp_path, capsys):
    import torch

    args = ["pretrain", *tiny, f"out_dir={tmp_path}", "train.ckpt_every_steps=1"]
    assert main([*args, "train.max_steps=1"]) == 0
    path = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["pred_hidden"] = state["config"]["moco"].pop("pred_hidden")  # as main saved it
    torch.save(state, path)
    capsys.readouterr()
    assert main([*args, "train.max_steps=2"]) == 0  # not "trained with other settings"
    err = capsys.readouterr().err
    assert f"model.pred_hidden is now moco.pred_hidden (in the config of {path})" in err
    assert torch.load(path, weights_only=True)["step"] == 2


def test_an_old_key_whose_new_section_this_run_has_not_is_left_out_of_the_saved_config(capsys):
    from infoview.pretrain.resume import saved_config

    # a distillation (method=crd) saved model.pred_hidden: 0 on main; its config has no moco section
    saved = {"method": "crd", "model": {"arch": "resnet18", "pred_hidden": 0}, "crd": {"dim": 8}}
    assert saved_config(saved, {"method": "crd", "model": {"arch": "resnet18"}, "crd": {"dim": 8}}, "x.pt") == \
        {"method": "crd", "model": {"arch": "resnet18"}, "crd": {"dim": 8}}
    assert "model.pred_hidden is now moco.pred_hidden (in the config of x.pt)" in capsys.readouterr().err
    now = {"method": "moco", "model": {"arch": "resnet18"}, "moco": {"pred_hidden": 0, "bn": "auto"}}
    assert saved_config({**saved, "moco": {"bn": "auto"}}, now, "x.pt")["moco"] == {"bn": "auto", "pred_hidden": 0}
