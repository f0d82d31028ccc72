"""`infoview knn`: the weighted kNN of a frozen encoder, on the features `infoview linear` extracts too."""
from __future__ import annotations

import json

import pytest
import yaml

from infoview.backbones.knn import knn_accuracy
from infoview.backbones.spec import frozen_features, load_backbone_spec
from infoview.cli import main

COMMON = ["data.num_workers=0", "train.progress=false", "train.device=cpu"]


def test_knn_on_digits_writes_and_prints_its_json(cifar_checkpoint, tmp_path, capsys):
    out = tmp_path / "knn"
    assert main(["knn", f"backbone={cifar_checkpoint}", f"out_dir={out}", *COMMON]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "knn.json").read_text())
    assert printed == saved
    assert saved["k"] == 200 and saved["temperature"] == 0.07 and saved["feature_dim"] == 64
    assert saved["num_train"] == 1437 and saved["num_test"] == 360 and saved["data"] == "digits"
    assert 10 < saved["top1"] <= saved["top5"] <= 100 and saved["backbone"].startswith("pretrained")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["knn"] == {"k": 200, "temperature": 0.07} and config["backbone"] == str(cifar_checkpoint)
    assert "git_commit" in config["_provenance"]


def test_knn_is_the_weighted_vote_on_the_shared_features(cifar_checkpoint, tmp_path, capsys):
    assert main(["knn", f"backbone={cifar_checkpoint}", f"out_dir={tmp_path}", "knn.k=10", "knn.temperature=0.5",
                 "data.batch_size=100", *COMMON]) == 0
    result = json.loads(capsys.readouterr().out)
    bb = load_backbone_spec(str(cifar_checkpoint))
    feats = frozen_features(bb, "digits", ["train", "test", "train"], 64, 0, "auto", "cpu")
    assert list(feats) == ["train", "test"]
    expected = knn_accuracy(*feats["train"], *feats["test"], k=10, temperature=0.5)
    assert result["k"] == 10 and result["top1"] == pytest.approx(expected["top1"])


def test_linear_and_knn_share_one_feature_extraction(cifar_checkpoint, tmp_path, monkeypatch, capsys):
    import infoview.backbones.spec as backbone

    calls = []

    def counting(bb, source, splits, *args):
        calls.append(tuple(splits))
        return frozen_features(bb, source, splits, *args)

    monkeypatch.setattr(backbone, "frozen_features", counting)
    assert main(["knn", f"backbone={cifar_checkpoint}", f"out_dir={tmp_path / 'k'}", *COMMON]) == 0
    assert main(["linear", f"backbone={cifar_checkpoint}", f"out_dir={tmp_path / 'l'}", "train.epochs=1",
                 *COMMON]) == 0
    assert calls == [("train", "test"), ("train", "test")]
    capsys.readouterr()


def test_bad_input_is_a_clear_error(cifar_checkpoint, tmp_path, capsys):
    assert main(["knn", f"backbone={tmp_path}/nothing.pt"]) == 2
    assert "no such checkpoint file or export folder" in capsys.readouterr().err
    assert main(["knn", *COMMON]) == 2
    assert "backbone=" in capsys.readouterr().err
    assert main(["knn", f"backbone={cifar_checkpoint}", "knn.k=0", f"out_dir={tmp_path}", *COMMON]) == 2
    assert "k must be a positive integer" in capsys.readouterr().err
    assert main(["knn", "knn.kk=3"]) == 2
    assert "did you mean 'knn.k'" in capsys.readouterr().err
    assert main(["knn", "--help"]) == 0
    assert "temperature: 0.07" in capsys.readouterr().out
