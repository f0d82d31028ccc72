"""Adding a view recipe is one file: the example in docs/architecture.md, dropped into the package, just works."""
from __future__ import annotations

import sys

import pytest
import torch

import infoview.augment.recipes as recipes
from infoview.augment import build_views, resolve
from infoview.cli import main
from infoview.commands import build_config


@pytest.fixture
def crops(doc_example_module):
    """The doc's ``crops`` recipe as a module of infoview.augment.recipes."""
    return doc_example_module(recipes, "Adding a view recipe", "crops")


def test_the_documented_recipe_is_listed_and_offered_without_being_imported(crops, capsys):
    assert main(["list", "recipes"]) == 0
    assert capsys.readouterr().out.split() == ["byol", "crops", "mocov2", "multicrop", "simclr"]
    assert main(["pretrain", "--help"]) == 0
    assert "one of simclr, mocov2, byol, multicrop, crops" in capsys.readouterr().out
    assert crops not in sys.modules  # read from the file
    _, cfg = build_config("pretrain", ["augment.recipe=crops"])
    assert cfg.augment.recipe == "crops"


def test_the_documented_recipe_makes_views_with_crops_and_flips_only(crops):
    (spec,) = resolve("crops", 16, num_views=1)
    assert tuple(spec.ops["crop"]["scale"]) == (0.2, 1.0) and spec.ops["flip"]["p"] == 0.5
    assert all(spec.ops[op]["p"] == 0 for op in ("jitter", "grayscale", "blur", "solarize"))
    images = torch.full((4, 3, 24, 24), 128, dtype=torch.uint8)
    views = build_views("crops", 16, normalize="none", seed=0)(images)
    assert len(views) == 2 and views[0].shape == (4, 3, 16, 16)
    assert torch.allclose(views[0], torch.full_like(views[0], 128 / 255), atol=1e-5)  # no colour changed
