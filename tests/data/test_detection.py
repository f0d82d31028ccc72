"""Detection data (infoview.data.detection and its schemes): COCO, Penn-Fudan and shapes as images with boxes and masks.

The detector trained on them is tested in tests/eval/test_eval_detection.py.
"""
from __future__ import annotations

import os

import pytest
import torch

from infoview.data.detection import open_detection_source
from infoview.data.schemes.coco import CocoDetection
from infoview.data.schemes.pennfudan import PennFudanDetection
from infoview.data.schemes.shapes import ShapesDetection
from infoview.errors import InfoviewError


def test_pennfudan(shared_data):
    root = shared_data / "pennfudan"
    ds = PennFudanDetection(str(root))
    train, val = ds.split(50)
    assert (len(train), len(val)) == (120, 50) and val.records[0]["name"] == sorted(os.listdir(root / "PNGImages"))[120]
    image, target = ds[0]
    assert image.shape[0] == 3 and image.dtype == torch.float32
    assert target["masks"].shape[1:] == image.shape[1:] and len(target["boxes"]) == 2  # FudanPed00001: 2 people
    assert torch.all(target["labels"] == 1)


def test_coco128(shared_data):
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


def test_synthetic_coco_edge_cases(make_coco, tmp_path):
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


def test_missing_images_error(make_coco, tmp_path):
    images, ann = make_coco(tmp_path / "coco", missing=3)
    with pytest.raises(InfoviewError, match=r"lists 3 image\(s\) \(of 8\) that are not in .*the first gone0.jpg"):
        CocoDetection(str(images), str(ann))


def test_a_coco_image_without_file_name_is_one_line_naming_it(make_coco, tmp_path, capsys):
    import json

    from infoview.cli import main
    from infoview.data import open_source

    images, ann = make_coco(tmp_path / "coco")
    data = json.loads(ann.read_text())
    del data["images"][2]["file_name"]
    ann.write_text(json.dumps(data))
    for open_ in (lambda: open_source(f"coco:{images}:{ann}"), lambda: open_detection_source(f"coco:{images}:{ann}")):
        with pytest.raises(InfoviewError, match=r"instances.json: image 2 of 'images' \(.*\"id\": 30.*\) has no "
                                                r"file_name; each image needs an id and a file_name"):
            open_()
    assert main(["prepare", f"coco:{images}:{ann}", str(tmp_path / "x.beton")]) == 2  # a command: one line
    assert "has no file_name" in capsys.readouterr().err


def test_coco_annotations_of_unknown_images_or_categories_are_counted_and_left_out(make_coco, tmp_path, capsys):
    import json

    from infoview.data import open_source

    images, ann = make_coco(tmp_path / "coco")
    data = json.loads(ann.read_text())
    stray = [{"id": 90, "image_id": 999, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
             {"id": 91, "image_id": 10, "category_id": 99, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
             {"id": 92, "image_id": 10, "category_id": 99, "bbox": [2, 2, 5, 5], "area": 25.0, "iscrowd": 0}]
    data["annotations"] += stray
    ann.write_text(json.dumps(data))
    ds = open_detection_source(f"coco:{images}:{ann}")
    said = capsys.readouterr().err.strip()
    assert said.endswith("of its annotations, 1 name an image_id that is not in 'images' (999) and 2 name a "
                         "category_id that is not in 'categories' (99); those are left out")
    assert len(said.splitlines()) == 1
    assert [a["id"] for a in ds.records[0]["anns"]] == [1, 2]  # image 10's own two, not the stray ones
    assert len(ds.coco_gt().dataset["annotations"]) == 6
    assert open_source(f"coco:{images}:{ann}")[0][1] == 0  # the images kind: 'box', as without the stray ones
    assert "those are left out" in capsys.readouterr().err


def test_shapes_detection_boxes_are_the_masks_boxes():
    ds = open_detection_source("shapes")
    assert isinstance(ds, ShapesDetection) and len(ds) == 2000 and ds.num_classes == 4
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and target["masks"].shape[1:] == (128, 128)
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_unknown_and_wrong_kind_sources_list_the_detection_schemes(tmp_path):
    with pytest.raises(InfoviewError, match=r"unknown detection data source 'voc:/x'.*shapes.*coco:<images folder>"
                                            r":<instances.json>.*pennfudan:<root>"):
        open_detection_source("voc:/x")
    with pytest.raises(InfoviewError, match=r"'digits' has no boxes and instance masks \(it is a source of images\)"):
        open_detection_source("digits")
    (tmp_path / "PedMasks").mkdir()
    with pytest.raises(InfoviewError, match=r"did you mean pennfudan:"):
        open_detection_source(str(tmp_path))
    with pytest.raises(InfoviewError, match=r"'shapes' takes no argument"):
        open_detection_source("shapes:x")
