"""The momentum encoder (MoCo / BYOL target) and BYOL's cosine momentum schedule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from infoview.errors import ConfigError, InfoviewError
from infoview.models import MLP, MomentumEncoder, build_encoder, momentum_at


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), MLP(8, hidden_dim=8, out_dim=4))


def _perturb(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# --------------------------------------------------------------------------- schedule


def test_schedule_runs_from_base_to_final_on_a_cosine():
    assert momentum_at(0, 100) == pytest.approx(0.99)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(25, 100, base=0.9, final=1.0) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    values = [momentum_at(s, 100, base=0.9) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_schedule_clamps_steps_and_handles_no_schedule():
    assert momentum_at(-5, 100) == pytest.approx(0.99)
    assert momentum_at(250, 100) == pytest.approx(1.0)
    assert momentum_at(10, 0, base=0.996) == pytest.approx(0.996)
    assert momentum_at(10, -1, base=0.5, final=0.5) == 0.5


@pytest.mark.parametrize("base,final", [(-0.1, 1.0), (0.99, 0.9), (0.5, 1.5)])
def test_schedule_rejects_bad_endpoints(base, final):
    with pytest.raises(ConfigError, match=r"0 <= base <= final <= 1"):
        momentum_at(0, 10, base=base, final=final)


# --------------------------------------------------------------------------- encoder


def test_copy_starts_equal_frozen_and_independent():
    online = _net()
    mom = MomentumEncoder(online)
    assert all(torch.equal(a, b) for a, b in zip(mom.parameters(), online.parameters()))
    assert not any(p.requires_grad for p in mom.parameters())
    assert all(p.requires_grad for p in online.parameters())
    _perturb(online)
    assert not torch.equal(mom.module[0].weight, online[0].weight)


def test_momentum_one_leaves_it_unchanged_and_zero_copies():
    online = _net()
    mom = MomentumEncoder(online)
    before = _params(mom)
    _perturb(online)
    mom.update(online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, mom.parameters()))
    mom.update(online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(mom.parameters(), online.parameters()))


def test_update_is_the_exact_ema():
    online = _net()
    mom = MomentumEncoder(online)
    old = _params(mom)
    _perturb(online)
    mom.update(online, 0.9)
    for p_m, p_old, p_o in zip(mom.parameters(), old, online.parameters()):
        torch.testing.assert_close(p_m, 0.9 * p_old + 0.1 * p_o.detach(), rtol=0, atol=1e-6)


def test_bn_running_stats_are_copied_not_averaged():
    online = _net().train()
    mom = MomentumEncoder(online)
    online(torch.randn(8, 6) * 3 + 2)  # moves the online BN running stats
    assert not torch.equal(mom.module[1].running_mean, online[1].running_mean)
    mom.update(online, 0.99)
    assert torch.equal(mom.module[1].running_mean, online[1].running_mean)
    assert torch.equal(mom.module[1].num_batches_tracked, online[1].num_batches_tracked)


def test_no_gradient_reaches_the_momentum_copy():
    online = _net()
    mom = MomentumEncoder(online)
    x = torch.randn(4, 6)
    target = mom(x)
    assert not target.requires_grad
    (online(x) - target).pow(2).sum().backward()
    assert all(p.grad is None for p in mom.parameters())
    assert all(p.grad is not None for p in online.parameters())


def test_mode_is_whatever_is_set_on_it():
    online = _net().train()
    mom = MomentumEncoder(online)
    assert mom.training and mom.module.training
    mom.eval()
    mom.update(online, 0.5)
    assert not mom.module.training and online.training
    x = torch.randn(4, 6)
    torch.testing.assert_close(mom(x), mom(x))  # eval BN: no batch statistics


def test_state_dict_round_trips():
    online = _net()
    mom = MomentumEncoder(online)
    _perturb(online)
    mom.update(online, 0.7)
    fresh = MomentumEncoder(_net())
    fresh.load_state_dict(mom.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), mom.state_dict().values()))
    assert not any(p.requires_grad for p in fresh.parameters())


def test_update_checks_the_momentum_and_the_module():
    online = _net()
    mom = MomentumEncoder(online)
    with pytest.raises(ConfigError, match=r"momentum must be in \[0, 1\], got 1.5"):
        mom.update(online, 1.5)
    with pytest.raises(InfoviewError, match="online module has"):
        mom.update(nn.Linear(6, 8), 0.9)


def test_works_with_a_ddp_wrapped_online_module(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        online = nn.parallel.DistributedDataParallel(_net())
        mom = MomentumEncoder(online)
        assert not isinstance(mom.module, nn.parallel.DistributedDataParallel)
        assert set(mom.state_dict()) == {f"module.{k}" for k in online.module.state_dict()}
        _perturb(online)
        mom.update(online, 0.0)
        assert all(torch.equal(a, b) for a, b in zip(mom.parameters(), online.module.parameters()))
    finally:
        dist.destroy_process_group()


def test_moco_step_on_a_timm_encoder_moves_the_target_a_little():
    torch.manual_seed(0)
    online = nn.Sequential(build_encoder("resnet18", cifar_stem=True, channels=(8, 8, 16, 16)), MLP(16, 16, 8))
    mom = MomentumEncoder(online)
    opt = torch.optim.SGD(online.parameters(), lr=0.5)
    x = torch.randn(2, 3, 16, 16)
    online(x).pow(2).sum().backward()
    opt.step()
    start = _params(mom)
    m = momentum_at(0, 10, base=0.9)
    mom.update(online, m)
    moved = [(a - b).abs().max() for a, b in zip(mom.parameters(), start)]
    gap = [(o.detach() - b).abs().max() for o, b in zip(online.parameters(), start)]
    assert max(moved) > 0
    for d, g in zip(moved, gap):  # each parameter went (1 - m) of the way to the online one
        assert d == pytest.approx(0.1 * float(g), rel=1e-4, abs=1e-7)
