"""build_encoder: timm models as feature extractors, the 32-px stems, configs that rebuild."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from infoview.errors import ConfigError, InfoviewError
from infoview.models import Encoder, build_encoder

SMALL_RESNET = dict(channels=(16, 32, 64, 128))  # timm 1.0.31: stage widths of a ResNet


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resnet18_cifar_stem_keeps_32px_until_the_first_stage():
    enc = build_encoder("resnet18", cifar_stem=True)
    assert isinstance(enc, Encoder) and enc.feature_dim == 512
    conv = enc.backbone.conv1
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert conv.padding == (1, 1) and conv.bias is None and (conv.in_channels, conv.out_channels) == (3, 64)
    assert isinstance(enc.backbone.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert enc.backbone.forward_features(x).shape == (2, 512, 4, 4)  # 32 / 8, not 32 / 32
        feats = enc(x)
    assert feats.shape == (2, 512) and feats.dtype == torch.float32


def test_without_cifar_stem_a_32px_image_shrinks_to_one_pixel():
    enc = build_encoder("resnet18", **SMALL_RESNET)
    with torch.no_grad():
        assert enc.backbone.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 1, 1)
    assert isinstance(enc.backbone.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("arch", ["resnet18d", "resnet10t"])
def test_cifar_stem_replaces_a_deep_stem_by_one_conv(arch):
    assert isinstance(timm.create_model(arch, num_classes=0, stem_width=8, **SMALL_RESNET).conv1, nn.Sequential)
    enc = build_encoder(arch, cifar_stem=True, stem_width=8, **SMALL_RESNET)
    conv = enc.backbone.conv1
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert conv.out_channels == enc.backbone.bn1.num_features == 16  # deep stem ends at 2 * stem_width
    with torch.no_grad():
        assert enc.backbone.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 4, 4)
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize("arch", ["resnetv2_18", "resnetv2_18d"])
def test_cifar_stem_on_a_pre_activation_resnet_keeps_32px_until_the_first_stage(arch):
    # Local Aggregation's authors train a pre-activation ResNet-18 (timm: resnetv2_18)
    enc = build_encoder(arch, cifar_stem=True, **SMALL_RESNET)
    conv = enc.backbone.stem.conv
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert conv.bias is None and (conv.in_channels, conv.out_channels) == (3, 64)
    assert isinstance(enc.backbone.stem.pool, nn.Identity) and list(enc.backbone.stem.state_dict()) == ["conv.weight"]
    with torch.no_grad():
        assert enc.backbone.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 4, 4)  # 32 / 8
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_channels_make_a_small_resnet():
    small = build_encoder("resnet18", **SMALL_RESNET)
    assert small.feature_dim == 128
    assert sum(p.numel() for p in small.parameters()) < 1_000_000  # resnet18 itself has 11M
    assert small.backbone.layer4[-1].conv2.out_channels == 128


def test_vit_cifar_stem_uses_4px_patches_on_32px_images():
    enc = build_encoder("vit_tiny_patch16_224", cifar_stem=True, depth=2)
    assert enc.backbone.patch_embed.patch_size == (4, 4)
    assert enc.backbone.patch_embed.num_patches == 64
    assert enc.img_size == 32 and enc.feature_dim == 192 and len(enc.backbone.blocks) == 2
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_vit_patch_size_and_img_size_given_by_the_caller_win():
    enc = build_encoder("vit_tiny_patch16_224", cifar_stem=True, img_size=16, patch_size=8, depth=1)
    assert enc.backbone.patch_embed.patch_size == (8, 8) and enc.backbone.patch_embed.num_patches == 4
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 16, 16)).shape == (2, 192)


def test_vit_without_cifar_stem_keeps_its_own_size():
    enc = build_encoder("vit_tiny_patch16_224", depth=1)
    assert enc.img_size == 224 and enc.backbone.patch_embed.patch_size == (16, 16)


def test_kwargs_reach_timm():
    enc = build_encoder("vit_tiny_patch16_224", cifar_stem=True, depth=2, drop_path_rate=0.1)
    assert enc.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_img_size_is_recorded_for_a_convnet_that_takes_any_size():
    enc = build_encoder("resnet18", cifar_stem=True, img_size=32, **SMALL_RESNET)
    assert enc.img_size == 32 and enc.config["img_size"] == 32
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 24, 24)).shape == (2, 128)


def test_same_seed_builds_the_same_weights():
    torch.manual_seed(7)
    a = build_encoder("resnet18", cifar_stem=True, **SMALL_RESNET)
    torch.manual_seed(7)
    b = build_encoder("resnet18", cifar_stem=True, **SMALL_RESNET)
    torch.manual_seed(8)
    c = build_encoder("resnet18", cifar_stem=True, **SMALL_RESNET)
    assert _same_weights(a, b)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("resnet18", dict(cifar_stem=True, img_size=32, **SMALL_RESNET)),
        ("resnet10t", dict(cifar_stem=True, stem_width=8, **SMALL_RESNET)),
        ("resnetv2_18", dict(cifar_stem=True, **SMALL_RESNET)),
        ("vit_tiny_patch16_224", dict(cifar_stem=True, depth=1, drop_path_rate=0.1)),
    ],
)
def test_config_survives_json_and_rebuilds_the_same_model(arch, kw):
    torch.manual_seed(0)
    enc = build_encoder(arch, **kw)
    cfg = json.loads(json.dumps(enc.config))
    assert cfg["arch"] == arch and cfg["feature_dim"] == enc.feature_dim and cfg["cifar_stem"] is True
    torch.manual_seed(0)
    again = build_encoder(**{k: v for k, v in cfg.items() if k != "feature_dim"})
    assert again.config == cfg
    assert _same_weights(enc, again)


def test_kwargs_entry_of_a_config_merges_with_direct_kwargs():
    enc = build_encoder("resnet18", kwargs={"channels": [16, 32, 64, 128]}, drop_path_rate=0.1)
    assert enc.feature_dim == 128 and enc.kwargs == {"channels": [16, 32, 64, 128], "drop_path_rate": 0.1}
    with pytest.raises(ConfigError, match="channels given both directly and inside kwargs"):
        build_encoder("resnet18", kwargs={"channels": [16, 32, 64, 128]}, channels=(8, 8, 8, 8))


def test_img_size_reaches_a_non_vit_model_that_takes_it():
    tiny_swin = dict(depths=(1, 1), num_heads=(1, 2), embed_dim=16)
    enc = build_encoder("swin_tiny_patch4_window7_224", img_size=56, **tiny_swin)
    assert enc.backbone.patch_embed.img_size == (56, 56) and enc.img_size == 56
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 56, 56)).shape == (1, enc.feature_dim)


def test_backbone_state_dict_has_timm_key_names_and_loads_into_plain_timm():
    enc = build_encoder("resnet18", **SMALL_RESNET).eval()
    plain = timm.create_model("resnet18", num_classes=0, **SMALL_RESNET).eval()
    plain.load_state_dict(enc.backbone.state_dict())  # strict: same names, same shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), enc(x))


def test_unknown_arch_suggests_the_nearest_timm_name():
    with pytest.raises(ConfigError, match=r"unknown encoder arch 'resnt18'; did you mean 'resnet18'"):
        build_encoder("resnt18")


def test_misspelt_kwarg_names_arch_kwarg_and_fix():
    with pytest.raises(ConfigError) as err:
        build_encoder("resnet18", chanels=(16, 32, 64, 128))
    msg = str(err.value)
    assert "'resnet18'" in msg and "'chanels'" in msg and "did you mean 'channels'" in msg
    assert not isinstance(err.value, TypeError)


def test_vit_misspelt_kwarg_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'vit_tiny_patch16_224' does not take the kwarg 'depht'; did you mean 'depth'"):
        build_encoder("vit_tiny_patch16_224", depht=2)


def test_cifar_stem_on_an_unsupported_family_says_which_are_supported():
    with pytest.raises(ConfigError, match=r"cifar_stem=True is not supported for encoder arch 'mobilenetv3_small_050'.*ResNet.*Vision Transformers"):
        build_encoder("mobilenetv3_small_050", cifar_stem=True)


@pytest.mark.parametrize(
    "kw,word",
    [
        (dict(img_size=0), "img_size"),
        (dict(img_size="32"), "img_size"),
        (dict(cifar_stem="yes"), "cifar_stem"),
        (dict(num_classes=10), "num_classes"),
    ],
)
def test_bad_settings_name_the_setting(kw, word):
    with pytest.raises(ConfigError, match=word):
        build_encoder("resnet18", **kw)


def test_config_refuses_a_kwarg_json_cannot_hold():
    enc = build_encoder("resnet18", act_layer=nn.SiLU, **SMALL_RESNET)
    with pytest.raises(InfoviewError, match="act_layer.*act_layer='gelu'"):
        enc.config
    assert build_encoder("resnet18", act_layer="silu", **SMALL_RESNET).config["kwargs"]["act_layer"] == "silu"


def test_forward_rejects_a_batch_without_channels():
    enc = build_encoder("resnet18", **SMALL_RESNET)
    with pytest.raises(InfoviewError, match=r"\(B, C, H, W\).*\(3, 32, 32\)"):
        enc(torch.randn(3, 32, 32))
