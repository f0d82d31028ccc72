"""The one reader of photo files (infoview.data.images): every mode to RGB uint8, 16-bit scaled, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from infoview.data import open_detection_source, open_segmentation_splits, open_source, read_image
from infoview.data.images import image_size, load_mask_file
from infoview.errors import InfoviewError

# a 16-bit ramp over the whole range: 0, 257 (= 1 in 8 bits), 32896 (= 128), 65535 (= 255), and in-between values
VALUES16 = np.array([[0, 257, 32896, 65535], [128, 129, 1000, 65000]], dtype=np.uint16)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(VALUES16).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # the test writes what it means to
    image = read_image(path)
    expected = np.round(VALUES16 / 65535 * 255).astype(np.uint8)
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    assert (image == expected[..., None]).all()
    assert image[0, :, 0].tolist() == [0, 1, 128, 255] and image[1, :, 0].tolist() == [0, 1, 4, 253]


def test_32_bit_integer_images_read_as_16_bit_values_and_float_images_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), mode="I").save(tmp_path / "int.tif")
    assert read_image(tmp_path / "int.tif")[0, :, 1].tolist() == [0, 255, 255]
    Image.fromarray(np.ones((2, 2), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(InfoviewError, match=r"cannot read image .*float\.tif: .*floating-point"):
        read_image(tmp_path / "float.tif")


def test_every_8_bit_mode_becomes_rgb(tmp_path):
    rgb = np.array([[[10, 20, 30], [200, 100, 50]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((1, 2), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), mode="LA").save(tmp_path / "la.png")
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    assert (read_image(tmp_path / "rgb.png") == rgb).all()
    assert (read_image(tmp_path / "rgba.png") == rgb).all()  # the alpha is dropped, the colours kept
    for name in ("gray.png", "la.png"):
        assert (read_image(tmp_path / name) == rgb[..., :1]).all(), name  # the gray repeated over R, G, B
    assert (read_image(tmp_path / "palette.png") == rgb).all()
    assert image_size(tmp_path / "rgb.png") == (1, 2)
    assert (read_image((tmp_path / "rgb.png").read_bytes(), name="the bytes") == rgb).all()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InfoviewError, match=r"image file .*nothere\.png does not exist"):
        read_image(tmp_path / "nothere.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InfoviewError, match=r"cannot read image .*bad\.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(InfoviewError, match=r"cannot read image sample 3"):
        read_image(b"junk", name="sample 3")
    with pytest.raises(InfoviewError, match=r"cannot read image .*bad\.jpg"):
        image_size(tmp_path / "bad.jpg")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb_mask.png")
    with pytest.raises(InfoviewError, match=r"mask .*rgb_mask\.png has mode RGB"):
        load_mask_file(tmp_path / "rgb_mask.png")


def test_images_detection_and_segmentation_sources_read_a_16_bit_png_alike(tmp_path):
    """One reader: the folder, coco (images and detection) and masks sources give the same pixels for a 16-bit PNG."""
    deep = np.linspace(0, 65535, 16 * 20).reshape(16, 20).astype(np.uint16)
    expected = np.round(deep / 65535 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    for folder in ("folder/cls", "images/train", "images/val"):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(deep).save(tmp_path / folder / "a.png")
    folder_image, _ = open_source(f"folder:{tmp_path / 'folder'}")[0]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 20}],
                               "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    coco_image, _ = open_source(f"coco:{tmp_path / 'folder/cls'}:{ann}")[0]
    detection_image, _ = open_detection_source(f"coco:{tmp_path / 'folder/cls'}:{ann}")[0]
    for split in ("train", "val"):
        (tmp_path / "masks" / split).mkdir(parents=True)
        Image.fromarray(np.ones((16, 20), np.uint8)).save(tmp_path / "masks" / split / "a.png")
    train, _ = open_segmentation_splits(f"masks:{tmp_path / 'images'}:{tmp_path / 'masks'}")
    segmentation_image, _ = train.load(0)
    assert (folder_image == expected).all() and (coco_image == expected).all()
    assert (segmentation_image == expected).all()
    assert torch.equal(detection_image, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
