"""Optimisers, weight-decay groups, the schedules and the global-batch rule."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from infoview.errors import ConfigError
from infoview.training.optim import (
    build_optimizer,
    cosine_factor,
    cut_schedule,
    lr_factor,
    poly_factor,
    scaled_lr,
    set_lr,
    warmup_decay_factors,
)


def test_lr_follows_the_global_batch_not_the_number_of_processes():
    # 2 nodes x 8 GPUs x 256 per GPU and 1 GPU x 4096: the same global batch, the same lr
    assert scaled_lr(0.3, 4096, 256, "linear") == pytest.approx(0.3 * 16)
    assert scaled_lr(0.075, 4096, 1, "sqrt") == pytest.approx(0.075 * 64)  # SimCLR's LARS rule
    assert scaled_lr(0.03, 512, 256, "none") == 0.03
    with pytest.raises(ConfigError, match="did you mean 'sqrt'"):
        scaled_lr(0.1, 256, 256, "sqr")


def test_warmup_then_cosine_to_the_floor():
    f = [lr_factor(s, total_steps=110, warmup_steps=10, min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up, full at its end
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)  # cosine half way
    assert f[110] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(5, total_steps=10, warmup_steps=0) == pytest.approx(0.5)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)
        self.token = torch.nn.Parameter(torch.zeros(1, 1, 4))

    def no_weight_decay(self):
        return {"token"}


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_biases_norms_and_listed_tokens_get_no_weight_decay(name):
    model = Tiny()
    probe = torch.nn.Linear(4, 3)
    opt = build_optimizer(name, model, lr=0.5, weight_decay=0.1,
                          extra_groups=[{"params": list(probe.parameters()), "lr": 0.2}])
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model.conv.weight), id(model.fc.weight)}
    assert {id(p) for p in probe.parameters()} <= {id(p) for g in opt.param_groups for p in g["params"]}
    set_lr(opt, 0.5)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.25)  # the probe keeps its own peak


def test_unknown_optimizer_and_bad_values():
    with pytest.raises(ConfigError, match="did you mean 'lars'"):
        build_optimizer("lats", Tiny(), lr=0.1)
    with pytest.raises(ConfigError, match="positive"):
        build_optimizer("sgd", Tiny(), lr=0.0)


# --------------------------------------------------------------------------- the evaluators' schedules


def _old_detection_lr_at(step: int, total: int, t) -> float:
    """infoview.eval.detection.lr_at as it was before the schedule moved here, kept as the reference."""
    base = float(t.lr)
    warm = min(int(t.warmup_steps), total)
    if step < warm:
        alpha = step / warm
        factor = 0.001 * (1 - alpha) + alpha
    else:
        factor = 1.0
    if t.schedule == "cosine":
        span = max(total - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return base * factor * 0.5 * (1 + math.cos(math.pi * progress))
    drops = sum(step >= int(round(float(f) * total)) for f in t.milestones)
    return base * factor * (0.1 ** drops)


def _detection_lr(step: int, total: int, t, opt=None) -> float:
    """The lr detection's loop sets: the training schedule's factors applied by set_lr to a real optimiser."""
    opt = opt or build_optimizer("sgd", torch.nn.Linear(2, 2), lr=float(t.lr), nesterov=False)
    factors = warmup_decay_factors(step, total, int(t.warmup_steps), t.schedule, t.milestones)
    return set_lr(opt, *factors)


def test_lr_schedule():
    """Detectron2's warm-up, then step decay or cosine (this test was detection's, with its lr_at)."""
    from omegaconf import OmegaConf

    lr_at = _detection_lr
    t = OmegaConf.create({"lr": 0.1, "warmup_steps": 10, "schedule": "step", "milestones": [0.5, 0.75]})
    assert lr_at(0, 100, t) == pytest.approx(1e-4)
    assert lr_at(10, 100, t) == pytest.approx(0.1) and lr_at(49, 100, t) == pytest.approx(0.1)
    assert lr_at(50, 100, t) == pytest.approx(0.01) and lr_at(99, 100, t) == pytest.approx(0.001)
    t.schedule = "cosine"
    assert lr_at(10, 100, t) == pytest.approx(0.1) and lr_at(55, 100, t) == pytest.approx(0.05)


def test_detection_schedule_is_the_old_one_to_the_last_bit():
    """Every step of many runs: the same float as detection's own formula gave, not merely close."""
    lrs = (0.02, 0.01, 1e-4, 0.3, 0.0125)
    runs = ((1, 0), (6, 3), (7, 2), (50, 10), (100, 100), (333, 17), (1000, 1500), (12, 0))
    milestones = ([0.667, 0.889], [0.5, 0.75], [0.1, 0.2, 0.95], [], [1.0], [0.001])
    checked = 0
    for lr, (total, warmup), schedule, ms in itertools.product(lrs, runs, ("step", "cosine"), milestones):
        # plain attributes: OmegaConf's are slow over 60k steps (its floats are the same Python floats)
        t = SimpleNamespace(lr=lr, warmup_steps=warmup, schedule=schedule, milestones=ms)
        opt = build_optimizer("sgd", torch.nn.Linear(2, 2), lr=lr, nesterov=False)
        for step in range(total + 2):
            new, old = _detection_lr(step, total, t, opt), _old_detection_lr_at(step, total, t)
            assert new == old, (lr, total, warmup, schedule, ms, step)
            checked += 1
    assert checked > 50_000


def test_unknown_decay_is_named():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        warmup_decay_factors(0, 10, 2, "cosin")


def test_poly_decay():
    f = [poly_factor(s, 10) for s in range(12)]
    assert f[0] == 1.0 and f[5] == pytest.approx(0.5 ** 0.9) and f[10] == f[11] == 0.0
    assert all(a > b for a, b in zip(f[:10], f[1:11]))


def test_cosine_to_zero_is_the_linear_probes_lr_to_the_last_bit():
    f = [cosine_factor(s, 10) for s in range(12)]
    assert f[0] == 1.0 and f[5] == pytest.approx(0.5) and f[10] == f[11] == 0.0
    for peak in (0.5, 0.1 * 256 / 256, 0.3 * 100 / 256, 1e-3):  # as the probe set it before training/loop.py
        assert [peak * cosine_factor(s, 37) for s in range(40)] == [
            0.5 * peak * (1.0 + math.cos(math.pi * min(s, 37) / 37)) for s in range(40)]


# --------------------------------------------------------------------------- detection's optimiser


def _old_detection_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """infoview.eval.detection.build_optimizer as it was before it used build_optimizer here (the reference)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=float(t.lr), betas=(float(t.momentum), 0.999))
    return torch.optim.SGD(groups, lr=float(t.lr), momentum=float(t.momentum))


def _vit_detector_like(seed: int) -> torch.nn.Module:
    """A tiny ViT with class and register tokens (and a distillation-like token timm lists) inside a bigger model."""
    import timm

    torch.manual_seed(seed)
    model = torch.nn.Module()
    model.vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=1, embed_dim=16,
                                  num_heads=2, reg_tokens=2)
    model.dist_token = torch.nn.Parameter(torch.randn(1, 1, 16))  # timm's no_weight_decay lists it; detection did not
    model.head = torch.nn.Linear(16, 3)
    model.vit.blocks[0].norm1.weight.requires_grad_(False)  # frozen parameters stay out
    return model


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_detection_optimizer_is_the_old_one(name):
    """Same groups, same hyper-parameters (classical momentum, not timm's Nesterov) and bit-identical steps."""
    from omegaconf import OmegaConf

    t = OmegaConf.create({"optimizer": name, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.05})
    old_model, new_model = _vit_detector_like(0), _vit_detector_like(0)
    old = _old_detection_optimizer(old_model, t)
    new = build_optimizer(t.optimizer, new_model, lr=float(t.lr), weight_decay=float(t.weight_decay),
                          momentum=float(t.momentum), betas=(float(t.momentum), 0.999), nesterov=False,
                          no_decay=("pos_embed", "cls_token", "reg_token"))
    assert type(old) is type(new)

    def groups(opt, model):
        index = {id(p): n for n, p in model.named_parameters()}
        named = [(g["weight_decay"], sorted(index[id(p)] for p in g["params"])) for g in opt.param_groups]
        return sorted(g for g in named if g[1])

    assert groups(old, old_model) == groups(new, new_model)
    assert "dist_token" in groups(new, new_model)[-1][1]  # decayed, as before
    keys = ("momentum", "nesterov", "dampening", "betas", "eps", "amsgrad", "maximize", "lr")
    for g_old, g_new in zip(sorted(old.param_groups, key=lambda g: g["weight_decay"]),
                            sorted(new.param_groups, key=lambda g: g["weight_decay"])):
        assert {k: g_old[k] for k in keys if k in g_old} == {k: g_new[k] for k in keys if k in g_new}
    x = torch.randn(4, 3, 32, 32)
    for step in range(3):
        for model, opt in ((old_model, old), (new_model, new)):
            opt.zero_grad()
            out = model.head(model.vit(x)) + model.dist_token.sum()
            out.square().mean().backward()
            opt.step()
    for (n, a), (_, b) in zip(old_model.named_parameters(), new_model.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fused_kernel_takes_the_same_steps(name, same_steps):
    from infoview.training.optim import build_optimizer

    torch.manual_seed(0)
    # (no bias under a BatchNorm: its gradient is rounding noise, whose sign Adam turns into a step of lr)
    models = [torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer(name, m, 0.1, weight_decay=0.01, fused=f) for m, f in zip(models, (None, True))]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    x = torch.randn(16, 6)
    same_steps(models, opts, x, rtol=1e-5, atol=1e-6)


def test_fused_is_on_a_gpu_where_torch_can_and_asking_for_it_elsewhere_is_clear():
    from infoview.training.optim import build_optimizer, fused_choice

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert fused_choice(None, "sgd", cpu) is None  # the CPU keeps torch's default path
    assert fused_choice(None, "sgd", gpu) is True and fused_choice(None, "adamw", gpu) is True
    assert fused_choice(None, "lars", gpu) is None and fused_choice(False, "sgd", gpu) is False
    with pytest.raises(ConfigError, match=r"^optim.fused=true: lars has no fused kernel .*use optim.fused=null$"):
        build_optimizer("lars", torch.nn.Linear(2, 2), 0.1, fused=True)


def test_a_run_cut_by_max_steps_keeps_the_warm_ups_fraction_of_it():
    # detection's defaults: 100 warm-up steps of a 12-epoch run of 30 steps an epoch; max_steps=20 cuts it
    warm, note = cut_schedule(100, 20, 360, 30)
    assert warm == 6 and note.startswith("train.max_steps=20 cuts the run of 360 steps, train.epochs=12: ")
    assert cut_schedule(100, 360, 360, 30) == (100, "")  # the whole run: as given
    assert cut_schedule(100, 50, 0) == (50, "")  # no train.epochs: max_steps is the run, the warm-up at most it
    assert cut_schedule(100, 500, 360, 30) == (100, "")  # a longer run is not cut
    assert cut_schedule(0, 20, 360, 30) == (0, "")  # no warm-up: the cosine already ended at max_steps
    # ML-CPC's curriculum counts epochs: a run that ends before it says so
    _, note = cut_schedule(1950, 150, 195000, 195, anneal_epochs=1000)
    assert note.endswith("objective.anneal_epochs=1000 counts epochs and is not cut (the run ends at epoch 0.77)")
