"""`infoview detect`: Mask/Faster R-CNN with an FPN on our backbones, scored by pycocotools.

Tiny settings throughout (128 px, narrow heads, a few iterations): these check
that every source, backbone family and edge case runs and is scored
correctly, not how good the detector gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infoview.cli import main
from infoview.errors import InfoviewError
from infoview.eval.detection_data import CocoDetection, PennFudanDetection, ShapesDetection, open_detection_source
from infoview.eval.detection_eval import coco_evaluate
from infoview.eval.detection_model import SimpleFeaturePyramid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.min_size=128", "model.max_size=160", "model.fpn_channels=32", "model.box_head_dim=128",
        "model.mask_head_dim=32", "model.roi_batch_size=128", "model.detections_per_img=20",
        "data.num_workers=0", "data.batch_size=2", "train.warmup_steps=2", "train.progress=false"]


def detect(out: Path, *args: str) -> dict:
    assert main(["detect", *TINY, f"out_dir={out}", *args]) == 0
    assert (out / "config.yaml").is_file()
    return json.loads((out / "detect.json").read_text())


def check_metrics(result: dict, task: str = "segm") -> None:
    kinds = ("bbox", "segm") if task == "segm" else ("bbox",)
    for kind in kinds:
        assert set(result[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert result[kind]["AP"] is not None
        for value in result[kind].values():
            assert value is None or 0.0 <= value <= 100.0
    if task == "bbox":
        assert "segm" not in result


# --------------------------------------------------------------------------- end to end


def test_shapes_end_to_end_learns(photo_checkpoint, tmp_path):
    """Mask R-CNN on the narrow ResNet-18: after 40 iterations, easy shapes are found."""
    result = detect(tmp_path, f"backbone={photo_checkpoint}", "data.source=shapes", "data.holdout=12",
                    "data.batch_size=4", "train.max_steps=40", "train.lr=0.02", "train.warmup_steps=10",
                    "model.frozen_stages=-1", "model.max_size=128")
    check_metrics(result)
    assert result["iterations"] == 40 and result["eval_images"] == 12 and result["train_images"] == 1988
    assert result["bbox"]["AP50"] > 5.0, result["bbox"]  # about 30 here; 0 after 3 iterations
    assert result["segm"]["AP50"] > 2.0, result["segm"]
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,lr,loss") and "loss_mask" in log[0] and len(log) == 3  # steps 20, 40


def test_bbox_task_random_arch(tmp_path):
    """task=bbox is Faster R-CNN (no masks anywhere); backbone=random:<arch> works."""
    result = detect(tmp_path, "backbone=random:resnet18", "task=bbox", "data.holdout=3", "train.max_steps=2",
                    "model.frozen_stages=4")
    check_metrics(result, "bbox")
    assert result["model"] == "Faster R-CNN, FPN" and result["backbone"] == "random init of resnet18"
    # frozen_stages=4: the whole ResNet is frozen, only the FPN and the heads train
    assert result["trainable_params"] < 1_000_000


def test_vit_backbone(tmp_path):
    result = detect(tmp_path, "backbone=random:vit_tiny_patch16_224", "data.holdout=3", "train.max_steps=2")
    check_metrics(result)
    assert result["arch"] == "VisionTransformer"


def test_simple_feature_pyramid_strides():
    from infoview.models import build_encoder

    for patch in (8, 16):
        enc = build_encoder("vit_tiny_patch16_224", img_size=32, patch_size=patch, depth=1, embed_dim=32, num_heads=2)
        fpn = SimpleFeaturePyramid(enc.backbone, 16, frozen_stages=0)
        out = fpn(torch.rand(2, 3, 64, 96))  # not the ViT's own 32 px: position embeddings are resampled
        assert list(out) == ["0", "1", "2", "3", "pool"]
        assert [tuple(v.shape[2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
        assert all(v.shape[:2] == (2, 16) for v in out.values())
        assert not enc.backbone.patch_embed.proj.weight.requires_grad and enc.backbone.blocks[0].mlp.fc1.weight.requires_grad


def test_ddp_two_processes_cpu(photo_checkpoint, tmp_path):
    """Two gloo processes under torchrun: sharded training and evaluation, one detect.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "infoview.cli", "detect", *TINY, f"backbone={photo_checkpoint}", "data.holdout=5",
           "train.max_steps=2", f"out_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"world_size": 2') == 1  # one rank reports
    result = json.loads((tmp_path / "detect.json").read_text())
    assert result["world_size"] == 2 and result["eval_images"] == 5 and result["iterations"] == 2
    check_metrics(result)


# --------------------------------------------------------------------------- real data


def test_pennfudan(shared_data, photo_checkpoint, tmp_path):
    root = shared_data / "pennfudan"
    ds = PennFudanDetection(str(root))
    train, val = ds.split(50)
    assert (len(train), len(val)) == (120, 50) and val.records[0]["name"] == sorted(os.listdir(root / "PNGImages"))[120]
    image, target = ds[0]
    assert image.shape[0] == 3 and image.dtype == torch.float32
    assert target["masks"].shape[1:] == image.shape[1:] and len(target["boxes"]) == 2  # FudanPed00001: 2 people
    assert torch.all(target["labels"] == 1)
    result = detect(tmp_path, f"backbone={photo_checkpoint}", f"data.source=pennfudan:{root}", "data.holdout=4",
                    "eval.max_images=2", "train.max_steps=2")
    check_metrics(result)
    assert result["eval_images"] == 2 and result["train_images"] == 166


def test_coco128(shared_data, photo_checkpoint, tmp_path):
    c = shared_data / "coco128"
    source = f"coco:{c}/images/train2017:{c}/annotations/instances_train2017.json"
    ds = open_detection_source(source)
    assert len(ds) == 128 and ds.num_classes == 81
    by_name = {r["name"]: i for i, r in enumerate(ds.records)}
    gray, _ = ds[by_name["000000000086.jpg"]]  # the one grayscale JPEG
    assert gray.shape == (3, 640, 512) and torch.equal(gray[0], gray[1])
    empty_index = next(i for i, r in enumerate(ds.records) if not r["anns"])
    image, target = ds[empty_index]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, *image.shape[1:])
    crowd_index = next(i for i, r in enumerate(ds.records) if any(a["iscrowd"] for a in r["anns"]))
    _, target = ds[crowd_index]
    assert len(target["boxes"]) == sum(1 for a in ds.records[crowd_index]["anns"] if not a["iscrowd"])
    result = detect(tmp_path, f"backbone={photo_checkpoint}", f"data.source={source}", "data.holdout=3",
                    "train.max_steps=2")
    check_metrics(result)
    assert result["train_images"] == 125


# --------------------------------------------------------------------------- COCO edge cases


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros), as crowd regions use."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _poly(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def make_coco(folder: Path, missing: int = 0) -> tuple[Path, Path]:
    """Five images: RGB of two sizes, RGBA without objects, a grayscale PNG with an object and a
    crowd region (held out), and an image without objects (held out); polygons, a box-only
    annotation and an uncompressed-RLE crowd."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    specs = [  # (file, size (w, h), mode)
        ("a.jpg", (96, 64), "RGB"), ("b.jpg", (64, 112), "RGB"), ("c.png", (80, 80), "RGBA"),
        ("d.png", (100, 72), "L"), ("e.jpg", (72, 72), "RGB"),
    ]
    meta, anns = [], []
    for i, (name, (w, h), mode) in enumerate(specs, start=1):
        chans = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 60, size=(h, w, chans), dtype=np.uint8)
        arr[10:40, 10:40] = 220
        Image.fromarray(arr.squeeze(-1) if chans == 1 else arr, mode).save(images / name)
        meta.append({"id": i * 10, "file_name": name, "height": h, "width": w})
    anns += [
        {"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 30], "segmentation": [_poly(10, 10, 30, 30)],
         "area": 900.0, "iscrowd": 0},
        {"image_id": 10, "category_id": 7, "bbox": [50, 20, 30, 40], "segmentation": [[50, 20, 80, 20, 65, 60]],
         "area": 600.0, "iscrowd": 0},
        {"image_id": 20, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900.0, "iscrowd": 0},  # box only
        {"image_id": 20, "category_id": 7, "bbox": [5, 60, 0, 10], "segmentation": [], "area": 0.0,
         "iscrowd": 0},  # an empty box: dropped from training
        {"image_id": 40, "category_id": 3, "bbox": [10, 10, 30, 30], "segmentation": [_poly(10, 10, 30, 30)],
         "area": 900.0, "iscrowd": 0},
    ]
    crowd = np.zeros((72, 100), dtype=bool)
    crowd[45:70, 50:95] = True
    anns.append({"image_id": 40, "category_id": 7, "bbox": [50, 45, 45, 25], "segmentation": _rle_uncompressed(crowd),
                 "area": float(crowd.sum()), "iscrowd": 1})
    for k, a in enumerate(anns, start=1):
        a["id"] = k
    for extra in range(missing):
        meta.append({"id": 100 + extra, "file_name": f"gone{extra}.jpg", "height": 10, "width": 10})
    cats = [{"id": 3, "name": "box"}, {"id": 7, "name": "thing"}]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": meta, "annotations": anns, "categories": cats}))
    return images, ann_file


def test_synthetic_coco_edge_cases(photo_checkpoint, tmp_path):
    images, ann = make_coco(tmp_path / "coco")
    ds = CocoDetection(str(images), str(ann))
    assert ds.image_ids == [10, 20, 30, 40, 50] and ds.label_to_cat == [0, 3, 7]
    img, target = ds[1]  # box-only annotation: its box becomes its mask; the empty box is dropped
    assert target["boxes"].tolist() == [[10.0, 10.0, 40.0, 40.0]] and int(target["masks"].sum()) == 900
    img, target = ds[2]  # RGBA, no annotations
    assert img.shape == (3, 80, 80) and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 80, 80)
    img, target = ds[3]  # grayscale, one object and a crowd region: the crowd is not a training target
    assert img.shape == (3, 72, 100) and target["labels"].tolist() == [1]
    train, val = ds.split(2)
    gt = val.coco_gt()
    assert sorted(a["iscrowd"] for a in gt.dataset["annotations"]) == [0, 1]
    flipped = ds.configure(flip=1.0)[0][1]
    assert flipped["boxes"][0].tolist() == [96 - 40, 10, 96 - 10, 40]
    assert flipped["masks"][0, 10:40, 56:86].all() and not flipped["masks"][0, :, :56].any()

    result = detect(tmp_path / "run", f"backbone={photo_checkpoint}", f"data.source=coco:{images}:{ann}",
                    "data.holdout=2", "train.max_steps=3")
    check_metrics(result)
    assert (result["train_images"], result["eval_images"], result["eval_objects"], result["eval_crowd"]) == (3, 2, 1, 1)


def test_val_source(photo_checkpoint, tmp_path):
    """data.val_source: evaluate on a second annotation file (holdout unused)."""
    images, ann = make_coco(tmp_path / "coco")
    result = detect(tmp_path / "run", f"backbone={photo_checkpoint}", f"data.source=coco:{images}:{ann}",
                    f"data.val_source=coco:{images}:{ann}", "train.max_steps=1", "task=bbox")
    assert (result["train_images"], result["eval_images"]) == (5, 5)
    check_metrics(result, "bbox")


def test_missing_images_error(tmp_path, capsys):
    images, ann = make_coco(tmp_path / "coco", missing=3)
    with pytest.raises(InfoviewError, match=r"lists 3 image\(s\) \(of 8\) that are not in .*the first gone0.jpg"):
        CocoDetection(str(images), str(ann))
    # the command fails the same way, before loading a backbone or training
    assert main(["detect", "backbone=random:resnet18", f"data.source=coco:{images}:{ann}", f"out_dir={tmp_path}/o"]) == 2
    assert "gone0.jpg" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_inputs(tmp_path, capsys):
    assert main(["detect", "backbone=random:resnet18", "data.source=pennfudan:/nope", f"out_dir={tmp_path}"]) == 2
    assert "PNGImages" in capsys.readouterr().err
    assert main(["detect", "backbone=random:resnet18", "task=mask", f"out_dir={tmp_path}"]) == 2
    assert "segm" in capsys.readouterr().err
    assert main(["detect", "backbone=random:resnet18", "data.holdout=0", f"out_dir={tmp_path}"]) == 2
    assert "data.holdout" in capsys.readouterr().err
    assert main(["detect", "backbone=random:convnext_atto", "data.holdout=2", "train.max_steps=1",
                 *TINY, f"out_dir={tmp_path}"]) == 2
    assert "ResNet-like" in capsys.readouterr().err


# --------------------------------------------------------------------------- pieces


def test_no_detections_score_zero():
    ds = ShapesDetection(num_images=3)
    gt = ds.coco_gt()
    for iou_type in ("bbox", "segm"):
        metrics, _ = coco_evaluate(gt, [], iou_type, ds.image_ids)
        assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["APl"] is None


def test_perfect_detections_score_100():
    """The ground truth itself, as detections, scores AP 100: boxes, masks and ids line up."""
    ds = ShapesDetection(num_images=4)
    gt = ds.coco_gt()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                "segmentation": a["segmentation"]} for a in gt.dataset["annotations"]]
    for iou_type in ("bbox", "segm"):
        metrics, _ = coco_evaluate(gt, results, iou_type, ds.image_ids)
        assert metrics["AP"] == 100.0


def test_a_cifar_stem_backbone_is_said_to_be_slow_on_photos(cifar_checkpoint, tmp_path, capsys):
    assert main(["detect", f"backbone={cifar_checkpoint}", "task=bbox", "data.holdout=3", "train.max_steps=1",
                 "model.min_size=64", "model.max_size=96", "data.num_workers=0", "train.progress=false",
                 f"out_dir={tmp_path}"]) == 0
    err = capsys.readouterr().err
    assert "has the CIFAR stem" in err and "about 10x more" in err and "model.cifar_stem=false" in err
