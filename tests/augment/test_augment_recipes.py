"""Recipes are data; bad names and values give errors that say what is valid."""
import pytest
import torch

from infoview.augment import OPS, available_recipes, build_views, resolve
from infoview.errors import ConfigError, InfoviewError


def test_available_recipes():
    assert available_recipes() == ["byol", "mocov2", "multicrop", "simclr"]


def test_simclr_recipe_values():
    (spec, _) = resolve("simclr", 224)
    ops = spec.ops
    assert ops["crop"]["scale"] == (0.08, 1.0)
    assert ops["flip"]["p"] == 0.5
    assert ops["jitter"]["p"] == 0.8 and ops["jitter"]["hue"] == (-0.1, 0.1)
    assert ops["grayscale"]["p"] == 0.2
    assert ops["blur"]["p"] == 0.5
    assert resolve("mocov2", 224)[0].ops["crop"]["scale"] == (0.2, 1.0)


def test_blur_only_for_large_views():
    from infoview.augment.fused import FusedView
    from infoview.augment.recipes import blur_kernel_size

    assert FusedView(resolve("simclr", 32)[0]).p_blur == 0.0
    assert FusedView(resolve("simclr", 96)[0]).p_blur == 0.5
    assert blur_kernel_size(224, 0.1) == 23


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ConfigError, match="simclr") as err:
        build_views("simclrr", 32)
    assert "did you mean 'simclr'" in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, InfoviewError)


def test_unknown_op_and_parameter_name_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown op 'jiter'.*did you mean 'jitter'.*grayscale"):
        build_views("simclr", 32, overrides={"jiter.p": 0.5})
    with pytest.raises(ConfigError, match="unknown parameter 'prob' for op 'jitter'.*brightness.*hue"):
        build_views("simclr", 32, overrides={"jitter": {"prob": 0.5}})


def test_bad_values_are_clear():
    with pytest.raises(ConfigError, match=r"jitter.p must be a probability"):
        build_views("simclr", 32, overrides={"jitter.p": 1.5})
    with pytest.raises(ConfigError, match=r"crop.scale"):
        build_views("simclr", 32, overrides={"crop.scale": [0.5, 0.1]})
    with pytest.raises(ConfigError, match="size"):
        build_views("simclr", 0)
    with pytest.raises(ConfigError, match="normalization preset.*cifar10"):
        build_views("simclr", 32, normalize="cifar")
    with pytest.raises(ConfigError, match="backend"):
        build_views("simclr", 32, backend="dali")
    with pytest.raises(ConfigError, match="multicrop only"):
        build_views("simclr", 32, num_local=4)


def test_override_shadowed_by_every_view_is_an_error():
    with pytest.raises(ConfigError, match="views.0.blur.p / views.1.blur.p"):
        build_views("byol", 32, overrides={"blur.p": 0.5})
    with pytest.raises(ConfigError, match="view index"):
        build_views("byol", 32, overrides={"views.5.blur.p": 0.5})
    with pytest.raises(ConfigError, match="no per-view section"):
        build_views("simclr", 32, overrides={"views.0.blur.p": 0.5})


def test_local_overrides_and_custom_recipes():
    views = build_views("multicrop", 64, overrides={"local.num": 2, "local.crop.scale": [0.1, 0.2]})
    assert views.sizes == [64, 64, 27, 27]
    assert views.specs[-1].ops["crop"]["scale"] == (0.1, 0.2)
    assert views.specs[0].ops["crop"]["scale"] == (0.14, 1.0)
    custom = build_views({"crop": {"scale": [0.5, 1.0]}, "flip": {"p": 1.0}}, 16, seed=0)
    assert custom.specs[0].ops["jitter"]["p"] == 0.0  # ops left out stay off
    with pytest.raises(ConfigError, match="unknown op 'colour'"):
        build_views({"colour": {}}, 16)


def test_every_op_has_a_probability_or_range():
    for op, params in OPS.items():
        assert "p" in params or op == "crop"


def test_bad_inputs_are_clear():
    views = build_views("simclr", 16)
    with pytest.raises(InfoviewError, match=r"\(B, 3, H, W\)"):
        views(torch.zeros(3, 16, 16, dtype=torch.uint8))
    with pytest.raises(InfoviewError, match="uint8"):
        views(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(InfoviewError, match="tensor"):
        views([1, 2, 3])
