"""`infoview linear` / `knn` measure on the data they should, and never lose or overwrite a result.

What a new user ran into: a .beton scored on its own training images, an
encoder pretrained on one dataset probed on digits by default, a val folder
whose layout made one class of it, results overwritten by the next command,
and checks that came only after minutes of feature extraction.
"""
from __future__ import annotations

import json

import pytest

import infoview.backbones.spec as backbone
from infoview.cli import main

COMMON = ["data.num_workers=0", "train.progress=false", "train.device=cpu"]


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail the test if any feature is extracted: the command must stop before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("features were extracted before the error")

    monkeypatch.setattr(backbone, "frozen_features", refuse)


def run(*args) -> int:
    return main([*args, *COMMON])


# ---- which data ----------------------------------------------------------------------


def test_without_data_source_it_measures_on_the_data_the_backbone_was_pretrained_on(cifar_checkpoint, tmp_path,
                                                                                     capsys):
    assert run("knn", f"backbone={cifar_checkpoint}", f"out_dir={tmp_path}") == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["data"] == result["test_data"] == "digits" and result["num_test"] == 360
    assert "data.source not given: measuring on digits" in err  # and it says so


def test_without_data_source_and_no_record_it_refuses(tmp_path, capsys, no_extraction):
    assert run("linear", "backbone=random:resnet18", f"out_dir={tmp_path}") == 2
    err = capsys.readouterr().err
    assert "data.source is not given" in err and "records no pretraining data" in err
    assert len(err.strip().splitlines()) == 1


def test_held_out_classes_that_differ_are_an_error_listing_both(cifar_checkpoint, tmp_path, capsys, no_extraction):
    from PIL import Image

    root = tmp_path / "data"
    for split, classes in (("train", ["cat", "dog"]), ("val", ["images"])):  # val/images/*.png: one class
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / split / c / f"{i}.png")
    assert run("linear", f"backbone={cifar_checkpoint}", f"data.source=folder:{root}", "data.test_split=val",
               f"out_dir={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert "[cat, dog]" in err and "[images]" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_test_split_fails_before_any_extraction(cifar_checkpoint, tmp_path, capsys, no_extraction):
    from PIL import Image

    for c in ("a", "b"):  # one folder, no train/test inside: no test split
        (tmp_path / "flat" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / c / "0.png")
    assert run("linear", f"backbone={cifar_checkpoint}", f"data.source=folder:{tmp_path / 'flat'}",
               f"out_dir={tmp_path / 'out'}") == 2
    assert "no 'test' split" in capsys.readouterr().err


# ---- .beton: one split per file -----------------------------------------------------


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    from infoview.data.beton import ffcv_import_error

    if ffcv_import_error():
        pytest.skip(ffcv_import_error())
    from infoview.data import open_source, write_beton

    folder = tmp_path_factory.mktemp("betons")
    for split in ("train", "test"):
        write_beton(open_source("digits", split=split), folder / f"{split}.beton", write_mode="raw", num_workers=1)
    return folder


def test_a_beton_is_not_its_own_held_out_split(cifar_checkpoint, betons, tmp_path, capsys, no_extraction):
    # the case seen: data.source=beton:train.beton scored on the training images (num_test = the train count)
    assert run("linear", f"backbone={cifar_checkpoint}", f"data.source=beton:{betons / 'train.beton'}",
               f"out_dir={tmp_path}") == 2
    assert "holds the 'train' split of digits, not 'test'" in capsys.readouterr().err


def test_a_beton_without_its_record_is_not_its_own_held_out_split_either(cifar_checkpoint, betons, tmp_path, capsys,
                                                                        no_extraction):
    import shutil

    bare = tmp_path / "bare.beton"
    shutil.copy(betons / "train.beton", bare)  # no bare.beton.json: its split is unknown
    assert run("knn", f"backbone={cifar_checkpoint}", f"data.source=beton:{bare}", f"out_dir={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err
    assert "no separate held-out split" in err and "data.test_source" in err


def test_data_test_source_names_the_held_out_beton(cifar_checkpoint, betons, tmp_path, capsys):
    assert run("knn", f"backbone={cifar_checkpoint}", f"data.source=beton:{betons / 'train.beton'}",
               f"data.test_source=beton:{betons / 'test.beton'}", f"out_dir={tmp_path}", "data.backend=pytorch") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_train"] == 1437 and result["num_test"] == 360


# ---- where results go ----------------------------------------------------------------


def test_results_go_beside_the_run_and_are_never_overwritten_unasked(cifar_checkpoint, capsys, monkeypatch):
    run_dir = cifar_checkpoint.parent.parent
    args = ["train.epochs=1", "data.source=digits"]
    assert run("linear", f"backbone={run_dir}", *args) == 0
    assert run("linear", f"backbone=random:{cifar_checkpoint}", *args) == 0  # the tour's second command
    first = json.loads((run_dir / "linear" / "linear.json").read_text())
    second = json.loads((run_dir / "linear_random" / "linear.json").read_text())
    assert first["backbone"].startswith("pretrained") and second["backbone"].startswith("random init")
    capsys.readouterr()

    def refuse(*a, **k):
        raise AssertionError("features were extracted before the error")

    monkeypatch.setattr(backbone, "frozen_features", refuse)
    assert run("linear", f"backbone={run_dir}", *args) == 2  # again: refused at once, the result kept
    err = capsys.readouterr().err
    assert "already holds a finished result (linear.json)" in err and "overwrite=true" in err
    assert json.loads((run_dir / "linear" / "linear.json").read_text()) == first
    monkeypatch.undo()
    assert run("linear", f"backbone={run_dir}", *args, "overwrite=true") == 0


def test_an_out_dir_that_is_a_file_is_refused_before_any_work(cifar_checkpoint, tmp_path, capsys, no_extraction):
    (tmp_path / "taken").write_text("x")
    for command in ("linear", "knn"):
        assert run(command, f"backbone={cifar_checkpoint}", f"out_dir={tmp_path / 'taken'}") == 2
        assert "is a file" in capsys.readouterr().err


def test_bad_settings_fail_before_any_extraction(cifar_checkpoint, tmp_path, capsys, no_extraction):
    assert run("knn", f"backbone={cifar_checkpoint}", "knn.k=0", f"out_dir={tmp_path}") == 2
    assert "k must be a positive integer" in capsys.readouterr().err
    assert run("linear", f"backbone={cifar_checkpoint}", "optim.lr=-1", f"out_dir={tmp_path}") == 2
    assert "lr must be" in capsys.readouterr().err


@pytest.mark.parametrize("command,result", [("detect", "detect.json"), ("segment", "segment.json")])
def test_detect_and_segment_keep_a_finished_result_and_say_so_first(command, result, tmp_path, capsys, monkeypatch):
    from infoview.eval import detection

    (tmp_path / result).write_text("{}")

    def refuse(*a, **k):
        raise AssertionError("the data was opened before the error")

    monkeypatch.setattr(detection, "_datasets", refuse)
    monkeypatch.setattr("infoview.eval.segmentation.open_segmentation_splits", refuse)
    assert main([command, "backbone=random:resnet18", f"out_dir={tmp_path}"]) == 2
    assert f"already holds a finished result ({result})" in capsys.readouterr().err
    assert (tmp_path / result).read_text() == "{}"


def test_default_out_dirs_sit_beside_what_is_measured(tmp_path):
    from infoview.backbones.spec import default_out_dir

    run_dir, export = tmp_path / "run", tmp_path / "run" / "export"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    export.mkdir()
    (export / "config.json").write_text("{}")
    assert default_out_dir(str(run_dir), "detect") == run_dir / "detect"
    assert default_out_dir(str(run_dir / "checkpoints" / "last.pt"), "segment") == run_dir / "segment"
    assert default_out_dir(f"random:{run_dir / 'checkpoints' / 'last.pt'}", "linear") == run_dir / "linear_random"
    # an export folder holds the export only: results go beside it
    assert default_out_dir(str(export), "knn") == run_dir / "export_knn"
    assert default_out_dir(f"random:{export}", "detect") == run_dir / "export_detect_random"
    assert default_out_dir(str(export) + "/", "segment") == run_dir / "export_segment"
    assert str(default_out_dir("random:resnet18", "detect")) == "runs/detect/random_resnet18"


def test_detect_without_pycocotools_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real(name, *a))
    assert main(["detect", "backbone=random:resnet18", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs pycocotools" in err and "pip install -e '.[detection]'" in err and len(err.splitlines()) == 1
