"""`infoview segment`: FCN / DeepLabV3 heads on CNN and ViT backbones, on the masks: source; the metrics.

The segmentation sources themselves are tested in tests/data/test_segmentation.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infoview.cli import main
from infoview.errors import InfoviewError
from infoview.eval.segmentation.metrics import confusion_matrix, constant_baseline, segmentation_metrics
from infoview.eval.segmentation.model import SegmentationModel

pytestmark = pytest.mark.slow

QUIET = ["data.num_workers=0", "train.progress=false"]


def _segment(capsys, out: Path, *args: str) -> dict:
    assert main(["segment", *QUIET, f"out_dir={out}", *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "segment.json").read_text())
    assert printed == saved
    assert (out / "config.yaml").is_file()
    return saved


def _check_png(path: Path, rows: int) -> None:
    assert path.is_file() and path.stat().st_size > 10_000
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 250 * rows and pixels.std() > 10  # one row per image, not blank
    assert not list(path.parent.glob(".predictions.png.*"))  # no temp file left behind


def _well_formed(r: dict) -> None:
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        assert 0 <= r[key] <= 100, key
    assert all(0 <= v <= 100 for v in r["per_class_iou"].values())
    assert r["classes_in_ground_truth"] >= 1 and r["steps"] >= 1 and r["time_s"] > 0


# --------------------------------------------------------------------------- end to end


def test_shapes_end_to_end_learns_beyond_the_constant_baseline(photo_checkpoint, tmp_path, capsys):
    out = tmp_path / "shapes"
    r = _segment(capsys, out, f"backbone={photo_checkpoint}", "data.source=shapes", "data.size=64",
                 "train.max_steps=60", "optim.lr=0.05", "eval.max_images=16", "plot.num_images=3")
    _well_formed(r)
    assert r["num_classes"] == 5 and r["val_images"] == 16 and r["steps"] == 60
    assert r["feature_map"]["stride"] == 8 and r["feature_map"]["size"] == [8, 8]  # dilated ResNet
    assert set(r["per_class_iou"]) <= {"1 background", "2 circle", "3 square", "4 triangle"}
    # predicting background everywhere scores ~20% mIoU; 60 steps reach ~32-38% (4 seeds)
    assert r["miou"] > r["constant_baseline"]["miou"] + 5
    _check_png(out / "predictions.png", rows=3)


def test_coco128_masks_with_deeplabv3(photo_checkpoint, shared_data, tmp_path, capsys):
    coco = shared_data / "coco128"
    out = tmp_path / "coco"
    r = _segment(capsys, out, f"backbone={photo_checkpoint}", "head=deeplabv3",
                 f"data.source=masks:{coco}/images:{coco}/semantic_segmentation/masks", "data.size=64",
                 "data.batch_size=2", "train.max_steps=2", "eval.max_images=3", "plot.num_images=2")
    _well_formed(r)
    assert (r["train_split"], r["val_split"]) == ("train2017", "val2017")  # found, train-like first
    assert r["train_images"] == 100 and r["val_images"] == 3
    assert r["images_without_mask"] == {"train2017": 28, "val2017": 28}
    assert r["num_classes"] == 201  # COCO panoptic ids up to 200, over both splits
    assert r["head"] == "deeplabv3" and r["ignore_index"] == 0
    assert not any(k.split()[0] == "0" for k in r["per_class_iou"])  # unlabelled is never scored
    assert any(" " in k for k in r["per_class_iou"])  # names from semantic_segmentation/config.yaml
    _check_png(out / "predictions.png", rows=2)


def test_vit_tokens_become_a_map(tmp_path, capsys):
    r = _segment(capsys, tmp_path / "vit", "backbone=random:vit_tiny_patch16_224", "data.source=shapes",
                 "data.size=32", "data.batch_size=2", "train.max_steps=2", "eval.max_images=2",
                 "freeze_backbone=true", "optim.name=adamw", "optim.lr=0.001", "plot.num_images=1")
    _well_formed(r)
    assert r["feature_map"]["stride"] == 16 and r["feature_map"]["size"] == [2, 2]
    assert r["feature_map"]["channels"] == 192


def test_frozen_vit_model_drops_prefix_tokens_and_trains_the_head_only():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, reg_tokens=2, depth=2)  # 1 cls + 2 registers
    model = SegmentationModel(vit, "fcn", num_classes=4, size=48, freeze=True)
    assert vit.patch_embed.img_size == (48, 48) and model.feature_hw == (3, 3)
    model.train()
    assert not model.backbone.training and model.head.training
    logits = model(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 4, 48, 48)
    logits.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    with pytest.raises(InfoviewError, match="multiple of the ViT's patch size 16"):
        SegmentationModel(timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1), "fcn", 4, 40)


# --------------------------------------------------------------------------- the masks: source, through the command


def _source(root: Path) -> str:
    return f"masks:{root / 'images'}:{root / 'masks'}"


def test_missing_split_errors(write_mask_split, tmp_path, capsys):
    write_mask_split(tmp_path, "train2017", ["a"])
    write_mask_split(tmp_path, "val2017", ["b"])
    assert main(["segment", *QUIET, "backbone=random:resnet18", f"data.source={_source(tmp_path)}",
                 "data.val_split=test", f"out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "data.val_split=test" in err and "no split 'test'" in err and "train2017, val2017" in err
    # the other split errors, without the command: tests/data/test_segmentation.py


# --------------------------------------------------------------------------- metrics


def test_void_pixels_change_nothing():
    # rows: ground truth 0 (void), 1, 2, 3; columns: prediction
    clean = np.array([[0, 0, 0, 0],
                      [0, 8, 2, 0],
                      [0, 1, 4, 0],
                      [0, 0, 0, 0]])
    with_void = clean.copy()
    with_void[0] = [50, 7, 9, 3]  # whatever is predicted on void pixels
    m = segmentation_metrics(clean, ignore_index=0)
    assert segmentation_metrics(with_void, ignore_index=0) == m
    assert m["miou"] == pytest.approx(100 * (8 / 11 + 4 / 7) / 2, abs=1e-3)
    assert m["pixel_accuracy"] == pytest.approx(100 * 12 / 15, abs=1e-3)
    assert m["classes_in_ground_truth"] == 2 and set(m["per_class_iou"]) == {"1", "2"}
    assert constant_baseline(with_void, 0) == constant_baseline(clean, 0) == {
        "miou": pytest.approx(100 * 10 / 15 / 2, abs=1e-3), "pixel_accuracy": pytest.approx(100 * 10 / 15, abs=1e-3)}

    # a class that is only predicted is listed (IoU 0) but not averaged into mIoU
    only_pred = clean.copy()
    only_pred[1, 3] = 1
    m3 = segmentation_metrics(only_pred, 0, {3: "cat"})
    assert m3["per_class_iou"]["3 cat"] == 0 and m3["classes_only_predicted"] == ["3 cat"]
    assert m3["miou"] == pytest.approx(100 * (8 / 12 + 4 / 7) / 2, abs=1e-3)

    # predicting the void class on a labelled pixel is an error, not a free pass
    pred_void = clean.copy()
    pred_void[1, 0] = 5
    assert segmentation_metrics(pred_void, 0)["pixel_accuracy"] == pytest.approx(100 * 12 / 20, abs=1e-3)


def test_confusion_drops_ignore_index_and_255():
    target = torch.tensor([[1, 2, 0, 255], [2, 2, 1, 0]])
    pred = torch.tensor([[1, 1, 2, 2], [2, 0, 1, 1]])
    conf = confusion_matrix(pred, target, num_classes=3, ignore_index=0)
    assert conf.sum() == 5  # the two 0s and the 255 are dropped
    assert conf.tolist() == [[0, 0, 0], [0, 2, 0], [1, 1, 1]]
    keep = (target != 0) & (target != 255)
    assert torch.equal(conf, confusion_matrix(pred[keep], target[keep], 3, 0))
    # another ignore index: 0 is a class, 2 is void, 255 still void
    conf2 = confusion_matrix(pred, target, num_classes=3, ignore_index=2)
    assert conf2.sum() == 4 and conf2[0].tolist() == [0, 1, 1]


# --------------------------------------------------------------------------- the void label is never guessed


def _road_scene(root: Path) -> None:
    """Masks where 0 is a real class (sky) and 11 the void label, as a public road-scene set has them."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = np.zeros((32, 32), np.uint8)  # sky above ...
            mask[16:] = 3  # ... road below
            mask[:, :4] = 11  # and a void border
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")


def test_without_ignore_index_or_a_description_of_the_void_class_it_asks(tmp_path, capsys):
    _road_scene(tmp_path)
    assert main(["segment", *QUIET, "backbone=random:resnet18", f"data.source={_source(tmp_path)}",
                 f"out_dir={tmp_path / 'out'}", "data.size=32", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "which mask id is void" in err and "ignore_index=<id>" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_given_ignore_index_is_used_and_sky_stays_a_class(tmp_path, capsys):
    _road_scene(tmp_path)
    r = _segment(capsys, tmp_path / "out", "backbone=random:resnet18", f"data.source={_source(tmp_path)}",
                 "data.size=32", "train.max_steps=1", "ignore_index=11", "data.batch_size=2")
    assert r["ignore_index"] == 11 and r["ignore_index_from"] == "given"
    assert "0" in r["per_class_iou"] and "11" not in r["per_class_iou"]  # sky scored, the void label not


def test_the_void_class_is_read_from_the_datasets_description_and_said(tmp_path, capsys):
    _road_scene(tmp_path)
    (tmp_path / "masks" / "config.yaml").write_text("classes:\n  0: sky\n  3: road\n  11: void\n")
    r = _segment(capsys, tmp_path / "out", "backbone=random:resnet18", f"data.source={_source(tmp_path)}",
                 "data.size=32", "train.max_steps=1", "data.batch_size=2")
    assert r["ignore_index"] == 11 and "names 11 'void'" in r["ignore_index_from"]


def test_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, capsys, monkeypatch):
    from infoview.eval import segmentation

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(segmentation, "train_head", out_of_memory)
    out = tmp_path / "out"
    assert main(["segment", *QUIET, "backbone=random:resnet18", "data.size=32", "data.batch_size=64",
                 f"out_dir={out}", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (a note on the void class, then the error)
    assert err[-1] == ("infoview segment: error: out of GPU memory with data.batch_size=64 images of data.size=32 px; "
                       "lower data.batch_size or data.size")
    assert not any("Traceback" in line for line in err)
    assert not out.exists()
