"""Every preset in infoview/configs/ resolves through the CLI, builds its objective and views, and
trains at its recipe's learning rate; the CIFAR presets also build their model.

A preset's peak learning rate (optim.lr scaled from optim.ref_batch to the global
batch) must equal the value its source recipe trains at, written down here: a
new preset needs an entry in EXPECTED_PEAK_LR.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from infoview.commands import build_config

CONFIGS = Path(__file__).resolve().parent.parent / "infoview" / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("distill_"))  # `infoview distill`'s: tests/commands/test_distill.py

# preset -> the peak lr of the recipe it follows, at the preset's global batch
EXPECTED_PEAK_LR = {
    "demo": 0.002,  # house demo: AdamW 0.002 at batch 128
    # SimCLR README, CIFAR-10: LARS --learning_rate=1.0 per 256, linear, at batch 512
    "simclr_infonce_cifar10": 2.0,
    "simclr_mlcpc_cifar10": 2.0,
    # lightly's CIFAR-10 benchmark: SGD 0.06 x batch / 128, at batch 512
    "simclr_infonce_cifar10_1gpu": 0.24,
    # Ring code, moco_ring.json: SGD 0.03 at batch 256
    "moco_ring_cifar10": 0.03,
    "moco_infonce_cifar10": 0.03,  # Ring code, moco.json: the same, without the ring
    # Ring code, nce.json and nce_ring.json (IR, IR-Ring): SGD 0.03 at batch 256
    "ir_infonce_cifar10": 0.03,
    "ir_ring_cifar10": 0.03,
    # MoCo CIFAR-10 demo: SGD 0.06 at batch 512
    "moco_hardneg_cifar10": 0.06,
    # Local Aggregation code, imagenet_la.json: SGD 0.03 at batch 128
    "la_cifar10": 0.03,
    # MoCo v2: SGD 0.03 at batch 256
    "mocov2_infonce_imagenet": 0.03,
    "moco_mlcpc_imagenet": 0.03,
    "moco_ring_imagenet": 0.03,
    # CMC with the ring paper's CIFAR-10 settings: SGD 0.03 at batch 256
    "cmc_infonce_cifar10": 0.03,
    # benchmarks/objectives_cifar10.yaml, sized for a CPU: AdamW 0.002 at batch 256
    "simclr_mlcpc_cifar10_cpu": 0.002,
    # MoCo v3 ViT recipe: AdamW 1.5e-4 x 4096 / 256
    "simclr_infonce_vit_small_imagenet": 1.5e-4 * 4096 / 256,
    "mocov3_infonce_vit_small_imagenet": 1.5e-4 * 4096 / 256,
}
# (the CPU preset reads the JPEGs with the ImageNet stem, on purpose: test_peak_lr and the rest cover it)
CIFAR = sorted(p for p in EXPECTED_PEAK_LR if "_cifar10" in p and not p.endswith("_cpu"))


def _resolve(path: Path):
    module, cfg = build_config("pretrain", ["--config", str(path)])
    return cfg


@pytest.fixture(scope="module", params=PRESETS, ids=[p.stem for p in PRESETS])
def preset(request):
    return request.param.stem, _resolve(request.param)


def test_the_recipe_presets_exist():
    missing = [name for name in EXPECTED_PEAK_LR if not (CONFIGS / f"{name}.yaml").is_file()]
    assert not missing, f"presets missing from {CONFIGS}: {missing}"


def test_peak_lr_is_the_recipes(preset):
    from infoview.training.optim import scaled_lr

    name, cfg = preset
    assert name in EXPECTED_PEAK_LR, f"infoview/configs/{name}.yaml: add its recipe's peak lr to EXPECTED_PEAK_LR"
    peak = scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.ref_batch, cfg.optim.lr_scaling)
    assert math.isclose(peak, EXPECTED_PEAK_LR[name], rel_tol=1e-9), (name, peak)


def test_begins_with_a_comment_naming_its_source(preset):
    name, _ = preset
    if name == "demo":
        pytest.skip("the demo is the house's own recipe")
    lines = (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# "), f"{name}.yaml must begin with a comment block"
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    text = " ".join(block)
    assert re.search(r"\bSources?:", text), f"{name}.yaml: the leading comment must name its source ('Source: ...')"
    assert re.search(r"\b(19|20)\d\d\b", text), f"{name}.yaml: the source should cite a paper with its year"


def test_name_matches_method_and_objective(preset):
    name, cfg = preset
    if name == "demo":
        return
    method, objective = name.split("_")[:2]
    if method == "la":  # Local Aggregation trains with its own loss: objective.* stays at its default
        assert cfg.method == "la" and cfg.objective.name == "infonce", (name, cfg.objective.name)
        return
    method = {"mocov3": "moco_v3"}.get(method, "moco" if method.startswith("moco") else method)
    assert cfg.method == method, (name, cfg.method)
    short = {"mlcpc": "ml_cpc", "hardneg": "hard_negative"}  # file-name spellings of objective names
    assert cfg.objective.name == short.get(objective, objective), (name, cfg.objective.name)


def test_objective_builds_and_runs_at_the_presets_scale(preset):
    """The objective accepts the preset's keys and gives a finite loss on scores shaped
    like the real ones (K from the batch or the queue), at the start and at the end."""
    from infoview.pretrain.building import build_objective

    name, cfg = preset
    objective = build_objective(cfg)
    assert objective.name == cfg.objective.name
    if cfg.method == "moco":
        k = int(cfg.moco.queue_size)
    elif cfg.method == "moco_v3":  # the keys of every other image in the global batch
        k = cfg.data.batch_size - 1
    elif cfg.method == "cmc":
        k = int(cfg.cmc.num_negatives) if cfg.cmc.negatives == "bank" else cfg.data.batch_size - 1
    elif cfg.method == "ir":  # rows drawn from a bank of CIFAR-10's 50,000 images (0: all the others)
        k = int(cfg.ir.num_negatives) or 50000 - 1
    else:  # SimCLR, 2 views: every view of every other image in the global batch
        k = cfg.augment.num_views * (cfg.data.batch_size - 1)
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(8, generator=gen) + 2.0
    neg = torch.randn(8, k, generator=gen)
    for epoch in (0.0, float(cfg.train.epochs)):
        objective.set_epoch(epoch)
        out = objective(pos, neg)
        assert torch.isfinite(out.loss) and torch.isfinite(out.mi), (name, epoch)


def test_views_resolve(preset):
    from omegaconf import OmegaConf

    from infoview.augment.recipes import normalization, resolve

    name, cfg = preset
    a = cfg.augment
    specs = resolve(a.recipe, int(a.size), int(a.num_views), overrides=OmegaConf.to_container(a.overrides) or None)
    normalization(a.normalize, None, None)
    if cfg.method in ("moco", "moco_v3"):
        assert len(specs) == 2 and len({s.size for s in specs}) == 1, name


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_preset_builds_its_model(name):
    """The encoder and method build from the config, and a 32-px batch of 2 gives features."""
    from infoview.backbones.encoder import build_encoder_from_config
    from infoview.pretrain.building import build_method

    cfg = _resolve(CONFIGS / f"{name}.yaml")
    assert cfg.augment.size == 32 and cfg.model.cifar_stem, name
    assert cfg.data.source.startswith("cifar10:"), name
    torch.manual_seed(0)
    encoder = build_encoder_from_config(cfg.model, cfg.augment.size, cfg.augment.normalize)
    encoder.eval()
    with torch.no_grad():
        feats = encoder(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, encoder.feature_dim)
    assert torch.isfinite(feats).all()
    method = build_method(cfg, encoder, num_classes=10, num_samples=50_000)  # CIFAR-10's train split
    assert method.projector.out_dim == cfg.model.proj_dim
