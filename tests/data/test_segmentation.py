"""Segmentation data (infoview.data.segmentation and its schemes): the masks: source, shapes as masks, split choice.

The heads trained on them are tested in tests/eval/test_eval_segmentation.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infoview.data.segmentation import SegmentationSet, open_segmentation_splits, resolve_splits
from infoview.errors import InfoviewError


def _source(root: Path) -> str:
    return f"masks:{root / 'images'}:{root / 'masks'}"


def test_an_image_without_any_mask_is_named(write_mask_split, tmp_path):
    write_mask_split(tmp_path, "val", ["v1"])
    write_mask_split(tmp_path, "train", ["a", "b"], masks=False)
    with pytest.raises(InfoviewError, match=r"no image pairs with a mask.*first image without a mask is .*a\.jpg"):
        open_segmentation_splits(_source(tmp_path))
    # a mask whose image is missing is named too
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "masks" / "train" / "zz.png")
    with pytest.raises(InfoviewError, match=r"mask .*zz\.png has no image with the stem 'zz'"):
        open_segmentation_splits(_source(tmp_path))


def test_pairs_by_stem_and_leaves_out_images_without_masks(write_mask_split, tmp_path):
    write_mask_split(tmp_path, "val", ["v1", "v2"])
    write_mask_split(tmp_path, "train", ["a", "b"])
    write_mask_split(tmp_path, "train", ["c"], masks=False)
    train, val = open_segmentation_splits(_source(tmp_path))
    assert (train.split, val.split, len(train), len(val)) == ("train", "val", 2, 2)
    assert train.unlabelled_images == 1 and train.first_unlabelled.endswith("c.jpg")
    image, mask = train.load(0)
    assert image.shape == (16, 20, 3) and mask.shape == (16, 20) and mask.dtype == np.int64
    assert train.label_ids() == {3}


def test_a_mask_of_another_size_is_named(write_mask_split, tmp_path):
    write_mask_split(tmp_path, "val", ["v1"])
    write_mask_split(tmp_path, "train", ["a"], mask_size=(8, 8))
    train, _ = open_segmentation_splits(_source(tmp_path))
    with pytest.raises(InfoviewError, match=r"mask .*a\.png is 8x8 .* but its image .*a\.jpg is 20x16"):
        train.label_ids()


def test_missing_split_errors(write_mask_split, tmp_path):
    write_mask_split(tmp_path, "train2017", ["a"])
    write_mask_split(tmp_path, "val2017", ["b"])
    (tmp_path / "images" / "extra").mkdir()
    (tmp_path / "masks" / "extra").mkdir()
    with pytest.raises(InfoviewError, match="3 split folder.*name them"):
        open_segmentation_splits(_source(tmp_path))
    missing = "data.val_split=val2017: no split 'val2017' in the masks root .*found there: extra, train2017"
    with pytest.raises(InfoviewError, match=missing):
        (tmp_path / "masks" / "val2017" / "b.png").unlink()
        (tmp_path / "masks" / "val2017").rmdir()
        open_segmentation_splits(_source(tmp_path), "train2017", "val2017")
    with pytest.raises(InfoviewError, match="no per-pixel labels"):
        open_segmentation_splits("digits")


def test_splits_default_to_the_two_found_train_like_first():
    assert resolve_splits(["val2017", "train2017"], "", "", "x") == ("train2017", "val2017")
    assert resolve_splits(["a_train", "b"], "", "", "x") == ("a_train", "b")
    assert resolve_splits(["test", "val"], "val", "", "x") == ("val", "test")
    with pytest.raises(InfoviewError, match="1 split folder"):
        resolve_splits(["train"], "", "", "x")



def test_the_split_beside_splitannot_layout_needs_no_symlinks(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / split / f"f{i}.png")
            Image.fromarray(np.full((8, 8), 2, np.uint8)).save(tmp_path / f"{split}annot" / f"f{i}.png")
    train, val = open_segmentation_splits(f"masks:{tmp_path}", "train", "val")
    assert (train.split, val.split, len(train), len(val)) == ("train", "val", 2, 2)
    image, mask = val.load(1)
    assert image.shape == (8, 8, 3) and int(mask[0, 0]) == 2
    with pytest.raises(InfoviewError, match="no split 'dev'"):
        open_segmentation_splits(f"masks:{tmp_path}", "train", "dev")
    with pytest.raises(InfoviewError, match="no split folder has its masks beside it"):
        open_segmentation_splits(f"masks:{tmp_path / 'train'}")


def test_shapes_as_masks_and_their_splits():
    train, val = open_segmentation_splits("shapes", size=32)
    assert (train.split, val.split, len(train), len(val)) == ("train", "val", 2000, 500)
    image, mask = train.load(0)
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32) and set(np.unique(mask)) <= {1, 2, 3, 4}
    assert 1 in mask and len(np.unique(mask)) >= 2  # background and at least one shape
    _, test = open_segmentation_splits("shapes", "train", "test")
    assert test.split == "test"
    with pytest.raises(InfoviewError, match="no split 'dev'"):
        open_segmentation_splits("shapes", "train", "dev")
    img, msk = SegmentationSet(val, 16, train=False)[0]
    assert tuple(img.shape) == (3, 16, 16) and tuple(msk.shape) == (16, 16)


def test_unknown_sources_list_the_segmentation_schemes():
    with pytest.raises(InfoviewError, match=r"unknown segmentation data source 'voc:/x'; expected one of: shapes, masks:"):
        open_segmentation_splits("voc:/x")
    with pytest.raises(InfoviewError, match=r"'pennfudan' has no per-pixel labels \(it is a source of detection\)"):
        open_segmentation_splits("pennfudan:/x")
    with pytest.raises(InfoviewError, match=r"must be masks:<images_root>:<masks_root> or masks:<root>"):
        open_segmentation_splits("masks:")
