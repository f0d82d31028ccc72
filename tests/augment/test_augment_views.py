"""The views a person would check: shapes, ranges, flips, seeding, dtypes, overrides, real-data statistics."""
import numpy as np
import pytest
import torch

from infoview.augment import RECIPES, available_recipes, build_views
from infoview.augment.recipes import NORMALIZATION

IDENTITY_CROP = {"crop": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]}}
NO_COLOUR = {"jitter.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0, "solarize.p": 0.0}


def images(b=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def denorm(v, preset="imagenet"):
    mean, std = (torch.tensor(t).view(1, 3, 1, 1) for t in NORMALIZATION[preset])
    return v * std + mean


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_gives_finite_float_views(recipe):
    views = build_views(recipe, 32, seed=0)
    out = views(images())
    assert isinstance(out, list) and len(out) == views.num_views
    for v in out:
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        # normalised [0, 1] pixels stay within the normalised range
        assert denorm(v).min() >= -1e-4 and denorm(v).max() <= 1 + 1e-4


def test_two_views_of_one_image_differ_and_samples_differ():
    x = images(1).expand(16, -1, -1, -1)  # the same image 16 times
    v1, v2 = build_views("simclr", 32, seed=0)(x)
    assert v1.shape == v2.shape == (16, 3, 32, 32)
    assert not torch.allclose(v1, v2)
    # per-sample parameters: the 16 copies get different views
    flat = v1.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-3


def test_multicrop_gives_two_global_and_n_local_views():
    views = build_views("multicrop", 64, seed=0)
    out = views(images(4, 80))
    assert [tuple(v.shape[-2:]) for v in out] == [(64, 64)] * 2 + [(27, 27)] * 6
    out = build_views("multicrop", 64, num_local=3, local_size=20, seed=0)(images(4, 80))
    assert [v.shape[-1] for v in out] == [64, 64, 20, 20, 20]
    assert build_views("multicrop", 224).sizes == [224, 224] + [96] * 6


def test_num_views_and_byol_asymmetry():
    assert len(build_views("mocov2", 32, num_views=4)(images(2))) == 4
    specs = build_views("byol", 96).specs
    assert specs[0].ops["blur"]["p"] == 1.0 and specs[0].ops["solarize"]["p"] == 0.0
    assert specs[1].ops["blur"]["p"] == 0.1 and specs[1].ops["solarize"]["p"] == 0.2
    assert specs[0].ops["jitter"]["saturation"] == (0.8, 1.2)


def test_constant_colour_stays_that_colour():
    colour = torch.tensor([200, 30, 120], dtype=torch.uint8).view(1, 3, 1, 1)
    x = colour.expand(6, 3, 72, 72).contiguous()
    # crop, flip and blur (p 1, the view is large enough for it) move no colour
    views = build_views("simclr", 64, seed=0, overrides={"jitter.p": 0.0, "grayscale.p": 0.0, "blur.p": 1.0})
    for v in views(x):
        rgb = denorm(v) * 255
        assert torch.allclose(rgb, colour.float().expand_as(rgb), atol=0.05)


def test_flip_only_gives_the_image_or_its_mirror():
    x = torch.zeros(32, 3, 16, 16, dtype=torch.uint8)
    x[..., 8:] = 255  # left half black, right half white
    views = build_views("simclr", 16, seed=1, normalize="none", overrides={**IDENTITY_CROP, **NO_COLOUR})
    out = torch.cat(views(x)) * 255
    same = (out - x.float().repeat(2, 1, 1, 1)).abs().amax(dim=(1, 2, 3)) < 1e-3
    mirror = (out - x.flip(-1).float().repeat(2, 1, 1, 1)).abs().amax(dim=(1, 2, 3)) < 1e-3
    assert (same | mirror).all()
    assert same.any() and mirror.any()  # p = 0.5 over 64 draws


def test_same_seed_same_views_other_seed_other_views():
    x = images()
    a = build_views("simclr", 32, seed=7)(x)
    b = build_views("simclr", 32, seed=7)(x)
    c = build_views("simclr", 32, seed=8)(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.allclose(a[0], c[0])


def test_seeded_sequence_restart_resume_and_global_rng_untouched():
    x = images()
    views = build_views("byol", 32, seed=3)
    state = torch.get_rng_state()
    first = views(x)
    saved = views.get_rng_state()
    second = views(x)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone
    assert not torch.allclose(first[0], second[0])  # each call draws anew
    views.set_rng_state(saved)
    assert torch.equal(views(x)[0], second[0])  # resume where a checkpoint was taken
    views.manual_seed(3)
    assert torch.equal(views(x)[0], first[0])


def test_unseeded_views_follow_torch_manual_seed():
    x = images()
    views = build_views("simclr", 32)
    torch.manual_seed(11)
    a = views(x)
    torch.manual_seed(11)
    b = views(x)
    assert torch.equal(a[0], b[0])


def test_uint8_and_float_inputs_agree():
    x = images()
    a = build_views("byol", 40, seed=0)(x)
    b = build_views("byol", 40, seed=0)(x.float() / 255)
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-4)


def test_overrides_change_one_op():
    x = images()
    gray = build_views("simclr", 32, seed=0, normalize="none", overrides={"grayscale": {"p": 1.0}})(x)
    for v in gray:
        assert torch.allclose(v[:, 0], v[:, 1], atol=1e-5) and torch.allclose(v[:, 1], v[:, 2], atol=1e-5)
    plain = build_views("simclr", 32, seed=0, normalize="none")(x)
    assert not torch.allclose(plain[0][:, 0], plain[0][:, 1])
    # dotted and nested forms are the same override
    a = build_views("simclr", 32, overrides={"jitter.p": 0.5}).specs[0].ops
    b = build_views("simclr", 32, overrides={"jitter": {"p": 0.5}}).specs[0].ops
    assert a == b and a["jitter"]["p"] == 0.5 and a["jitter"]["brightness"] == (0.6, 1.4)
    # the recipe table itself is not modified
    assert RECIPES["simclr"]["jitter"]["p"] == 0.8
    # one view of an asymmetric recipe
    specs = build_views("byol", 32, overrides={"views.1.solarize.p": 0.5}).specs
    assert [s.ops["solarize"]["p"] for s in specs] == [0.0, 0.5]


def test_colour_ops_match_torchvision_where_no_clamping_happens():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = images(4, 24)
    ops = {
        **IDENTITY_CROP, "flip.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0,
        "jitter": {"brightness": [0.8, 0.8], "contrast": [0.7, 0.7], "saturation": [0.5, 0.5], "hue": 0.0, "p": 1.0},
    }
    got = build_views("simclr", 24, seed=0, normalize="none", overrides=ops)(x)[0]
    ref = x.float() / 255
    ref = tvf.adjust_saturation(tvf.adjust_contrast(tvf.adjust_brightness(ref, 0.8), 0.7), 0.5)
    # factors below 1 never leave [0, 1], and these three steps commute, so order does not matter
    assert torch.allclose(got, ref, atol=1e-4)


def test_hue_matches_torchvision_adjust_hue():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = images(4, 16)
    for hue in (-0.3, 0.1, 0.45):
        ops = {
            **IDENTITY_CROP, "flip.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0,
            "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": [hue, hue], "p": 1.0},
        }
        got = build_views("simclr", 16, seed=0, normalize="none", overrides=ops)(x)[0]
        assert torch.allclose(got, tvf.adjust_hue(x.float() / 255, hue), atol=1e-4)


def test_solarize_inverts_bright_pixels():
    x = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.uint8).view(1, 1, 1, 6).expand(2, 3, 6, 6)
    ops = {**IDENTITY_CROP, **NO_COLOUR, "flip.p": 0.0, "solarize.p": 1.0}
    out = build_views("simclr", 6, seed=0, normalize="none", overrides=ops)(x)[0] * 255
    expect = torch.tensor([0, 100, 127, 255 - 128, 255 - 200, 0], dtype=torch.float32)
    assert torch.allclose(out[0, 0, 0], expect, atol=1e-3)


def test_grayscale_and_single_channel_inputs():
    x = images(2)[:, :1]
    out = build_views("simclr", 32, seed=0)(x)
    assert out[0].shape == (2, 3, 32, 32)


def test_kornia_backend_makes_the_same_kinds_of_views():
    x = images(4, 40)
    a = build_views("simclr", 32, seed=0, backend="kornia")(x)
    b = build_views("simclr", 32, seed=0, backend="kornia")(x)
    assert [v.shape for v in a] == [(4, 3, 32, 32)] * 2
    assert torch.equal(a[0], b[0])
    ident = {**IDENTITY_CROP, **NO_COLOUR, "flip.p": 0.0}
    k = build_views("simclr", 40, seed=0, backend="kornia", overrides=ident)(x)[0]
    f = build_views("simclr", 40, seed=0, overrides=ident)(x)[0]
    assert torch.allclose(k, f, atol=1e-3)


def _cifar(root, n):
    from PIL import Image

    classes = sorted(p for p in (root / "cifar10" / "train").iterdir() if p.is_dir())
    files = [f for group in zip(*(sorted(c.glob("*.jpg"))[:n] for c in classes)) for f in group][:n]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def test_normalised_statistics_on_real_cifar10(shared_data):
    x = _cifar(shared_data, 256)  # skips when ../shared/data is missing
    crop_flip = {"jitter.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0}
    views = build_views("simclr", 32, seed=0, normalize="cifar10", overrides=crop_flip)
    out = torch.cat(views(x))
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    assert (mean.abs() < 0.15).all(), mean
    assert ((std - 1).abs() < 0.15).all(), std
    # the full recipe keeps the scale too
    full = torch.cat(build_views("simclr", 32, seed=0, normalize="cifar10")(x))
    assert ((full.std(dim=(0, 2, 3)) - 1).abs() < 0.3).all()


@pytest.mark.gpu
def test_cuda_views_match_cpu_views_for_the_same_seed():
    x = images(8, 64)
    for backend in ("fused", "kornia"):
        cpu = build_views("byol", 48, seed=0, backend=backend)(x)
        gpu = build_views("byol", 48, seed=0, backend=backend)(x.cuda())
        assert all(v.device.type == "cuda" for v in gpu)
        if backend == "fused":  # parameters are drawn on the host: same views on any device
            for p, q in zip(cpu, gpu):
                assert torch.allclose(p, q.cpu(), atol=1e-3)
