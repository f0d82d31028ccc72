"""Sources: what a user gets from each source string, and the errors for bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from infoview.data import FolderSource, ShapesSource, open_source
from infoview.errors import InfoviewError


def test_digits_train_test_split():
    train, test = open_source("digits"), open_source("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)  # 1797 images, the last 20% held out
    image, label = train[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert 0 <= label <= 9 and isinstance(label, int)
    assert image.max() > 200 and image.min() < 20  # white ink on black, not blank
    assert (image[..., 0] == image[..., 1]).all()  # grey as RGB
    assert set(train.labels()) == set(range(10)) == set(test.labels())
    assert train.num_classes == 10
    # the test split is the tail: none of its images is the first training image
    assert not any(np.array_equal(test[i][0], image) for i in range(len(test)))


def test_shapes_boxes_contain_masks_and_label_is_largest_shape():
    src = open_source("shapes")
    assert isinstance(src, ShapesSource) and len(src) == 2000
    assert src.classes == ["circle", "square", "triangle"]
    for i in range(25):
        image, label = src[i]
        t = src.targets(i)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        k = len(t["labels"])
        assert k >= 1 and t["boxes"].shape == (k, 4) and t["masks"].shape == (k, 64, 64)
        assert t["boxes"].dtype == np.float32 and t["labels"].dtype == np.int64 and t["masks"].dtype == bool
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = np.nonzero(mask)
            assert len(xs) >= 9
            x1, y1, x2, y2 = box
            assert x1 <= xs.min() and xs.max() + 1 <= x2 and y1 <= ys.min() and ys.max() + 1 <= y2
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight
            # the shape stands out from the background
            inside, outside = image[mask].mean(0), image[~t["masks"].any(0)].mean(0)
            assert np.abs(inside - outside).max() > 30
        assert t["masks"].sum(0).max() == 1  # instances do not overlap
        areas = t["masks"].reshape(k, -1).sum(1)
        assert label == t["labels"][areas.argmax()]
    assert {src[i][1] for i in range(40)} == {0, 1, 2}


def test_shapes_is_seeded():
    a, b = ShapesSource(), ShapesSource()
    assert np.array_equal(a[7][0], b[7][0])
    assert not np.array_equal(a[7][0], ShapesSource(split="test")[7][0])
    assert not np.array_equal(a[7][0], ShapesSource(seed=1)[7][0])


def test_folder_of_real_cifar_jpegs(cifar_folder):
    train = open_source(f"folder:{cifar_folder}")
    test = open_source(f"folder:{cifar_folder}", split="test")
    assert train.classes == ["airplane", "cat", "truck"] and len(train) == len(test) == 9
    assert list(train.labels()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    image, label = train[4]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 1
    expected = np.asarray(Image.open(train.files[4]).convert("RGB"))
    assert np.array_equal(image, expected)
    assert "/test/" in test.describe(0)
    with pytest.raises(InfoviewError, match=r"no 'val' split; it has: test, train"):
        open_source(f"folder:{cifar_folder}", split="val")
    with pytest.raises(InfoviewError, match=r"no train/test/val subfolders"):
        open_source(f"folder:{cifar_folder}/train", split="test")


def test_folder_errors_are_clear(tmp_path, image_folder):
    with pytest.raises(InfoviewError, match=r"folder .*nowhere does not exist"):
        open_source(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InfoviewError, match=r"empty: expected one subfolder per class"):
        open_source(f"folder:{tmp_path / 'empty'}")
    (image_folder / "zebra").mkdir()
    (image_folder / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(InfoviewError, match=r"class folder .*zebra has no images"):
        open_source(f"folder:{image_folder}")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(InfoviewError, match=r"holds images directly .*one subfolder per class"):
        open_source(f"folder:{loose}")


def test_each_image_of_a_folder_source_is_listed_once_by_its_real_path(image_folder):
    """A link loop listed 40 images as 840 on main; a second link to a file or folder counted it again."""
    assert len(open_source(f"folder:{image_folder}")) == 12  # 3 classes of 4
    (image_folder / "cat" / "loop").symlink_to(image_folder / "cat")  # a loop
    (image_folder / "dog" / "again").symlink_to(image_folder / "dog")
    (image_folder / "dog" / "twice.png").symlink_to(image_folder / "dog" / "001.png")  # one file, two names
    source = open_source(f"folder:{image_folder}")
    assert len(source) == 12 and sorted(source.classes) == ["cat", "dog", "emu"]
    assert len({os.path.realpath(f) for f in source.files}) == 12


def test_one_image_under_two_classes_is_an_error_naming_it(image_folder):
    (image_folder / "emu" / "cat_or_emu.png").symlink_to(image_folder / "cat" / "002.png")
    with pytest.raises(InfoviewError, match=r"the image .*cat/002.png is under two classes, 'cat' .* and 'emu'"):
        open_source(f"folder:{image_folder}")


def test_corrupt_image_error_names_the_file(image_folder):
    bad = image_folder / "dog" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    src = FolderSource(str(image_folder))
    i = src.files.index(str(bad))
    with pytest.raises(InfoviewError, match=r"cannot read image .*dog/001\.png"):
        src[i]
    src[0]  # the others still read


def test_unknown_scheme_lists_the_valid_ones(tmp_path):
    with pytest.raises(InfoviewError, match=r"unknown data source 'imagenet:/x'.*digits, shapes, cifar10:<root>.*beton:<file>"):
        open_source("imagenet:/x")
    with pytest.raises(InfoviewError, match=r"did you mean beton:"):
        open_source("/data/train.beton")
    with pytest.raises(InfoviewError, match=r"did you mean folder:"):
        open_source(str(tmp_path))
    with pytest.raises(InfoviewError, match=r"digits has no split 'val'; valid splits: train, test"):
        open_source("digits", split="val")


def test_torchvision_sources_never_download_unasked(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "download", lambda self: pytest.fail("tried to download"))
    with pytest.raises(InfoviewError) as err:
        open_source(f"cifar10:{tmp_path}")
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    # advice that can be followed: the commands named really take download (only `infoview prepare` does)
    assert f"torchvision.datasets.CIFAR10('{tmp_path}', download=True)" in msg
    assert f"infoview prepare cifar10:{tmp_path} OUT.beton download=true" in msg
    with pytest.raises(InfoviewError, match=r"stl10_binary.*download=true"):
        open_source(f"stl10:{tmp_path}")
    with pytest.raises(InfoviewError, match=r"cifar-100-python"):
        open_source(f"cifar100:{tmp_path}", split="test")


def test_cifar10_root_that_is_a_jpeg_folder_gets_a_hint(shared_data):
    with pytest.raises(InfoviewError, match=r"use folder:"):
        open_source(f"cifar10:{shared_data / 'cifar10'}")


def test_coco128_labels_are_the_most_frequent_category(shared_data):
    root = shared_data / "coco128"
    src = open_source(f"coco:{root / 'images/train2017'}:{root / 'annotations/instances_train2017.json'}")
    assert len(src) == 128 and len(src.classes) == 80 and src.classes[0] == "person"
    labels = src.labels()
    assert labels.min() >= -1 and labels.max() < 80
    assert (labels >= 0).mean() > 0.9
    assert np.bincount(labels[labels >= 0]).argmax() == 0  # person dominates COCO
    image, _ = src[0]
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    with pytest.raises(InfoviewError, match=r"coco:<images folder>:<instances.json>"):
        open_source(f"coco:{root}")
    with pytest.raises(InfoviewError, match=r"not in .*val2017; do the image folder and the annotation file belong"):
        open_source(f"coco:{root / 'images/val2017'}:{root / 'annotations/instances_train2017.json'}")
