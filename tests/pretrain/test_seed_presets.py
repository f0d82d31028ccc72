"""The seed papers' methods train from their presets on `folder:` data: each preset, shrunk to a few steps."""
from __future__ import annotations

import json

import pytest

from infoview.cli import main

pytestmark = pytest.mark.slow

# what shrinks a CIFAR preset to a CPU test: 16 px, a narrow ResNet, small heads, two steps
SHRINK = ["data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.kwargs.channels=[8,16,32,64]",
          "train.max_steps=2", "train.eval_every=0", "train.progress=false", "train.threads=1",
          "monitor.max_images=0"]
PRESETS = {
    "ir_infonce_cifar10": ["model.proj_hidden=32", "ir.num_negatives=16"],
    "ir_ring_cifar10": ["model.proj_hidden=32"],  # the whole bank: every other image of the folder
    "cmc_infonce_cifar10": ["cmc.num_negatives=16"],
    "la_cifar10": ["la.background_k=16", "la.k=4", "la.num_kmeans=2", "la.kmeans_start_epoch=0"],
    "moco_infonce_cifar10": ["model.proj_hidden=32", "moco.queue_size=64"],
    # a one-block ViT-S at 32 px (4 patches): the preset's predictor, frozen patch projection and loss
    "mocov3_infonce_vit_small_imagenet": ["augment.size=32", "~model.kwargs.channels", "model.kwargs.depth=1",
                                          "model.proj_hidden=32", "moco_v3.pred_hidden=32", "data.resolution=32"],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, colour_images):
    """48 colour images of 32 px in three classes (CMC needs colour, so not digits)."""
    return colour_images(tmp_path_factory.mktemp("folder"), 48, 32, "abc")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_method_trains_from_its_preset_on_folder_data(preset, folder, tmp_path, capsys):
    args = ["pretrain", "--config", preset, f"data.source=folder:{folder}", f"out_dir={tmp_path}", *SHRINK,
            *PRESETS[preset]]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["loss"] is not None
    assert result["mi"] is not None and result["mi"] <= result["mi_ceiling"] + 1e-6  # every one certifies a bound
