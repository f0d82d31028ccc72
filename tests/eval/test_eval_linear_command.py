"""`infoview linear` on a pretraining checkpoint and on its random-init baseline."""
from __future__ import annotations

import json

import pytest
import torch

from infoview.backbones.spec import load_backbone_spec
from infoview.cli import main
from infoview.commands import build_config

pytestmark = pytest.mark.slow

TINY = ["data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.cifar_stem=true",
        "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16", "train.progress=false",
        "train.eval_every=0", "train.threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", *TINY, f"out_dir={out}", "train.max_steps=3"]) == 0
    return out


def test_random_spec_rebuilds_the_weights_pretraining_started_from(run):
    from infoview.pretrain.engine import Trainer

    _, cfg = build_config("pretrain", [*TINY, f"out_dir={run}/fresh", "train.max_steps=3"])
    start = Trainer(cfg).encoder.state_dict()  # before any step
    random_bb = load_backbone_spec(f"random:{run}/checkpoints/last.pt")
    trained_bb = load_backbone_spec(str(run))
    assert random_bb.size == 16 and random_bb.normalize == "imagenet"
    for key, value in start.items():
        assert torch.equal(random_bb.encoder.state_dict()[key], value), key
    assert any(not torch.equal(trained_bb.encoder.state_dict()[k], v) for k, v in start.items()
               if v.is_floating_point())


def test_linear_writes_its_json_for_both(run, tmp_path, capsys):
    for spec, name in ((str(run), "pretrained"), (f"random:{run}/checkpoints/last.pt", "random")):
        assert main(["linear", f"backbone={spec}", f"out_dir={tmp_path / name}", "train.epochs=5",
                     "train.progress=false", "data.num_workers=0"]) == 0
        printed = json.loads(capsys.readouterr().out)
        saved = json.loads((tmp_path / name / "linear.json").read_text())
        assert printed == saved and saved["num_test"] == 360 and 10 < saved["top1"] <= 100
        assert ("random init" in saved["backbone"]) == (name == "random")


def test_a_bad_backbone_is_a_clear_error(tmp_path, capsys):
    assert main(["linear", f"backbone={tmp_path}/nothing.pt"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["linear"]) == 2
    assert "backbone=" in capsys.readouterr().err
