"""method=crd (what `infoview distill` runs): the frozen teacher, the banks, and two ranks against one process."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError
from infoview.models import projector
from infoview.objectives import build
from infoview.pretrain.methods.crd import CRD, ClassPools

pytestmark = pytest.mark.slow

N, B, DIM, WORLD = 40, 8, 6, 2
LABELS = torch.arange(N) % 4  # 4 classes of 10 images
CASES = {"infonce": ("infonce", {}), "ml_cpc": ("ml_cpc", {"alpha": 0.5}),
         "labels": ("infonce", {"labelled": True})}  # CRD's own setting: cross-entropy + 0.8 CRD


class TinyEncoder(nn.Module):
    """A linear encoder of 4 x 4 images: no BatchNorm, whose per-rank statistics would differ by design."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.feature_dim = width
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, width), nn.Tanh())

    def forward(self, x):
        return self.net(x)


def make_method(objective="infonce", labelled=False, weight=None, num_negatives=5, **kw) -> CRD:
    torch.manual_seed(0)
    teacher = TinyEncoder(20)
    method = CRD(TinyEncoder(), projector(12, 8, DIM, num_layers=1), build(objective, **kw), 4 if labelled else 0,
                 teacher=teacher, renorm=("none", "none"), num_samples=N, temperature=0.5, dim=DIM,
                 num_negatives=num_negatives, seed=3, ce_weight=1.0 if labelled else 0.0, weight=weight)
    assert method.wants_split_labels == labelled
    if labelled:
        method.set_split_labels(LABELS)  # what the engine does
    return method


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


def test_with_labels_the_negatives_come_from_other_classes_and_crd_weighs_0_8_beside_the_cross_entropy():
    # RepDistiller's CIFAR100InstanceSample (mode exact) and train_student.py -r 1 -a 0 -b 0.8
    pools = ClassPools(LABELS)
    idx = torch.arange(N)
    drawn = pools.sample(idx, 400)
    assert (LABELS[drawn] != LABELS[idx][:, None]).all()  # never the image's own class (nor itself)
    for i in (0, 7):  # uniform over the 30 images of the other classes
        counts = torch.bincount(drawn[i], minlength=N).float()
        assert (counts[LABELS == LABELS[i]] == 0).all() and counts[LABELS != LABELS[i]].min() > 0
        assert counts[LABELS != LABELS[i]].std() / counts[LABELS != LABELS[i]].mean() < 0.35
    views, idx = batch()
    outs = {}
    for weight in (None, 1.0):
        method = make_method(labelled=True, weight=weight)
        torch.manual_seed(11)
        drawn = method._negatives(idx, B)
        assert (LABELS[drawn] != LABELS[idx][:, None]).all()
        torch.manual_seed(11)
        outs[weight] = method(views, LABELS[idx], idx)
    assert make_method(labelled=True).weight == 0.8 and make_method().weight == 1.0  # 1 without labels, as before
    labelled, plain = outs[None], outs[1.0]
    assert labelled.ssl_loss.item() == pytest.approx(0.8 * plain.ssl_loss.item(), rel=1e-6)
    assert labelled.loss.item() == pytest.approx(labelled.ssl_loss.item() + labelled.probe_loss.item(), rel=1e-6)
    assert labelled.probe_loss.item() > 0 and labelled.probe_count.item() == B


def test_with_labels_every_image_needs_one():
    method = make_method(labelled=True)
    unlabelled = LABELS.clone()
    unlabelled[3] = -1
    with pytest.raises(ConfigError, match="every image of the split needs a label, and 1 of 40 have none"):
        method.set_split_labels(unlabelled)


def _grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def _run(name: str, views, idx, ddp: bool):
    objective, kw = CASES[name]
    method = make_method(objective, **kw)
    model = torch.nn.parallel.DistributedDataParallel(method) if ddp else method
    torch.manual_seed(11)  # the engine seeds every rank alike: the draws of the global batch agree
    out = model(views, LABELS[idx] if method.ce_weight else None, idx)
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
