"""What a method's config may say: one temperature, and a predictor only where one is built."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from infoview.cli import main
from infoview.commands import build_config
from infoview.errors import ConfigError
from infoview.pretrain.building import build_objective
from infoview.pretrain.methods import get_method


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


@pytest.mark.parametrize("method", ["simclr", "ir", "cmc", "la", "crd"])
def test_a_predictor_is_refused_by_every_method_that_builds_none(method):
    cfg = pretrain_config(f"method={method}", "model.pred_hidden=64")
    encoder = SimpleNamespace(streams="lab", feature_dim=8)  # what cmc checks before the predictor
    with pytest.raises(ConfigError) as err:
        get_method(method).from_config(cfg, encoder, None, 0, num_samples=100)
    message = str(err.value)
    assert message.startswith("model.pred_hidden=64 is the predictor of method=moco only")
    assert "moco_v3.pred_hidden" in message and f"method={method} has none" in message


def test_crd_with_no_weight_on_either_loss_is_refused_before_the_teacher_loads():
    cfg = pretrain_config("method=crd", "crd.teacher=random:resnet18", "crd.weight=0")
    with pytest.raises(ConfigError, match="crd.weight=0 and crd.ce_weight=0 train nothing"):
        get_method("crd").from_config(cfg, SimpleNamespace(feature_dim=8), None, 10, num_samples=100)
