"""`infoview detect`: Mask/Faster R-CNN with an FPN on our backbones, scored by pycocotools.

The datasets themselves (COCO edge cases, Penn-Fudan, shapes) are tested in tests/data/test_detection.py.

Tiny settings throughout (128 px, narrow heads, a few iterations): these check
that every source, backbone family and edge case runs and is scored
correctly, not how good the detector gets.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infoview.cli import main
from infoview.data.schemes.shapes import ShapesDetection
from infoview.eval.detection.model import SimpleFeaturePyramid
from infoview.eval.detection.scoring import coco_evaluate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.min_size=128", "model.max_size=160", "model.fpn_channels=32", "model.box_head_dim=128",
        "model.mask_head_dim=32", "model.roi_batch_size=128", "model.detections_per_img=20",
        "data.num_workers=0", "data.batch_size=2", "optim.warmup_steps=2", "train.progress=false"]


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
                    "data.batch_size=4", "train.max_steps=40", "optim.lr=0.02", "optim.warmup_steps=10",
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
    result = detect(tmp_path, f"backbone={photo_checkpoint}", f"data.source=pennfudan:{root}", "data.holdout=4",
                    "eval.max_images=2", "train.max_steps=2")
    check_metrics(result)
    assert result["eval_images"] == 2 and result["train_images"] == 166


def test_coco128(shared_data, photo_checkpoint, tmp_path):
    c = shared_data / "coco128"
    source = f"coco:{c}/images/train2017:{c}/annotations/instances_train2017.json"
    result = detect(tmp_path, f"backbone={photo_checkpoint}", f"data.source={source}", "data.holdout=3",
                    "train.max_steps=2")
    check_metrics(result)
    assert result["train_images"] == 125


# --------------------------------------------------------------------------- COCO edge cases


def test_synthetic_coco_edge_cases(make_coco, photo_checkpoint, tmp_path):
    images, ann = make_coco(tmp_path / "coco")
    result = detect(tmp_path / "run", f"backbone={photo_checkpoint}", f"data.source=coco:{images}:{ann}",
                    "data.holdout=2", "train.max_steps=3")
    check_metrics(result)
    assert (result["train_images"], result["eval_images"], result["eval_objects"], result["eval_crowd"]) == (3, 2, 1, 1)


def test_val_source(make_coco, photo_checkpoint, tmp_path):
    """data.val_source: evaluate on a second annotation file (holdout unused)."""
    images, ann = make_coco(tmp_path / "coco")
    result = detect(tmp_path / "run", f"backbone={photo_checkpoint}", f"data.source=coco:{images}:{ann}",
                    f"data.val_source=coco:{images}:{ann}", "train.max_steps=1", "task=bbox")
    assert (result["train_images"], result["eval_images"]) == (5, 5)
    check_metrics(result, "bbox")


def test_missing_images_error(make_coco, tmp_path, capsys):
    images, ann = make_coco(tmp_path / "coco", missing=3)
    # the command fails as the dataset does (tests/data/test_detection.py), before loading a backbone or training
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


_IN_ONE_LONG_CALL = """
import hashlib, sys
from infoview.cli import main
from infoview.eval import detection

def train(*args, **kwargs):  # a step that stays inside one C call, as a detector's backward pass on a CPU does
    print("in the long call", flush=True)
    hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 50_000_000)  # about 20 s, holding off Python's own handler
    raise AssertionError("the long call ended before Ctrl-C was answered")

detection.train = train
sys.exit(main(["detect", *sys.argv[1:]]))
"""


def test_ctrl_c_stops_detect_within_seconds_while_it_is_inside_one_long_c_call(tmp_path):
    """Python runs its Ctrl-C handler only between two bytecodes: on main, detect went on to the end of the
    call (its backward pass), 30 s and more. A thread of infoview's own answers at once."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _IN_ONE_LONG_CALL, *TINY, "backbone=random:resnet18",
                             "data.holdout=3", f"out_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "in the long call", proc.stderr.read()[-2000:]
        time.sleep(0.5)
        asked = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        took = time.time() - asked
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 130 and took < 8, (took, err[-2000:])
    assert err.strip().splitlines()[-1] == "infoview detect: interrupted"
    assert not out.exists()  # the folder it held is let go of, and it was empty
