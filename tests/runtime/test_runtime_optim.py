"""Optimisers, weight-decay groups, the schedule and the global-batch rule."""
from __future__ import annotations


import pytest
import torch

from infoview.errors import ConfigError
from infoview.runtime.optim import build_optimizer, lr_factor, scaled_lr, set_lr


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
