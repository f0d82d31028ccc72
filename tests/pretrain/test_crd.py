"""method=crd (what `infoview distill` runs): the frozen teacher, the banks, and two ranks against one process."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.models import projector
from infoview.objectives import build
from infoview.pretrain.methods.crd import CRD

pytestmark = pytest.mark.slow

N, B, DIM, WORLD = 40, 8, 6, 2
CASES = {"infonce": ("infonce", {}), "ml_cpc": ("ml_cpc", {"alpha": 0.5})}


class TinyEncoder(nn.Module):
    """A linear encoder of 4 x 4 images: no BatchNorm, whose per-rank statistics would differ by design."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.feature_dim = width
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, width), nn.Tanh())

    def forward(self, x):
        return self.net(x)


def make_method(objective="infonce", **kw) -> CRD:
    torch.manual_seed(0)
    teacher = TinyEncoder(20)
    return CRD(TinyEncoder(), projector(12, 8, DIM, num_layers=1), build(objective, **kw), teacher=teacher,
               renorm=("none", "none"), num_samples=N, temperature=0.5, dim=DIM, num_negatives=5, seed=3)


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, 4, 4, generator=gen)], torch.randperm(N, generator=gen)[:B]


def test_the_teacher_gets_no_gradient_stays_in_eval_mode_and_both_banks_take_the_batch():
    method = make_method()
    method.train()
    assert not method.teacher.training and method.training
    views, idx = batch()
    teacher = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    tb, sb = method.teacher_bank.bank.clone(), method.student_bank.bank.clone()
    out = method(views, None, idx)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.teacher_head.weight.grad is not None and method.encoder.net[1].weight.grad is not None
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in teacher.items())
    with torch.no_grad():
        t = F.normalize(method.teacher_head(method.teacher(views[0])), dim=1)
        s = F.normalize(method.projector(method.encoder(views[0])), dim=1)
    torch.testing.assert_close(method.teacher_bank.bank[idx], F.normalize(0.5 * tb[idx] + 0.5 * t, dim=1))
    torch.testing.assert_close(method.student_bank.bank[idx], F.normalize(0.5 * sb[idx] + 0.5 * s, dim=1))
    assert out.mi.item() <= out.ceiling + 1e-6


def _grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def _run(name: str, views, idx, ddp: bool):
    objective, kw = CASES[name]
    method = make_method(objective, **kw)
    model = torch.nn.parallel.DistributedDataParallel(method) if ddp else method
    torch.manual_seed(11)  # the engine seeds every rank alike: the draws of the global batch agree
    out = model(views, None, idx)
    out.loss.backward()
    return method, out


def _on_rank(rank: int) -> dict:
    views, idx = batch()
    b = B // WORLD
    mine = slice(rank * b, (rank + 1) * b)
    results = {}
    for name in CASES:
        method, out = _run(name, [views[0][mine]], idx[mine], ddp=True)
        results[name] = [_grads(method), method.teacher_bank.bank.clone(), method.student_bank.bank.clone(),
                         out.mi.item()]
    return results


def test_two_ranks_give_the_single_process_gradient_banks_and_bound(gloo_ranks):
    ranks = gloo_ranks(_on_rank, world=WORLD)
    views, idx = batch()
    for name in CASES:
        method, out = _run(name, views, idx, ddp=False)
        ref = _grads(method)
        for r in range(WORLD):
            grads, tbank, sbank, mi = ranks[r][name]
            assert grads.keys() == ref.keys() and "teacher_head.weight" in ref
            for key, g in ref.items():
                torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
            torch.testing.assert_close(tbank, method.teacher_bank.bank, msg=name)
            torch.testing.assert_close(sbank, method.student_bank.bank, msg=name)
            assert mi == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6), name  # the global batch's bound
