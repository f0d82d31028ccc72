"""Each objective against a slow, loop-based float64 evaluation of its formula,
plus gradcheck. The references use plain Python floats and math, no log-sum-exp
tricks, so they are only fed moderate scores."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from infoview.objectives import build

SIZES = [(1, 1), (3, 2), (5, 9), (12, 30)]


def scores(n, k, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, generator=g, dtype=torch.float64) * scale + 1.0
    neg = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    return pos, neg


def rows(pos, neg):
    return pos.tolist(), neg.tolist()


# ---- references -------------------------------------------------------------


# each reference returns (loss, mi, ceiling, estimate or None)


def ref_infonce(pos, neg):
    p, q = rows(pos, neg)
    m = len(q[0]) + 1
    total = 0.0
    for i in range(len(p)):
        denom = math.exp(p[i]) + sum(math.exp(x) for x in q[i])
        total += p[i] - math.log(denom)
    mi = total / len(p) + math.log(m)
    return -mi, mi, math.log(m), None


def ml_cpc_j(p, q, alpha):
    n, m = len(p), len(q[0]) + 1
    w_pos = alpha / (n * m)
    w_neg = (m - alpha) / (n * m * (m - 1))
    z = 0.0
    for i in range(n):
        z += w_pos * math.exp(p[i])
        for x in q[i]:
            z += w_neg * math.exp(x)
    return sum(p) / n - math.log(z)


def ref_ml_cpc(pos, neg, alpha, kl_over_alpha=False):
    """Trains on J at alpha; certifies J at max(alpha, m / (n (m - 1) + 1)), the paper's floor."""
    p, q = rows(pos, neg)
    n, m = len(p), len(q[0]) + 1
    floor = Fraction(m, n * (m - 1) + 1)
    bound_alpha = max(alpha, float(floor))
    j = ml_cpc_j(p, q, alpha)
    loss = (math.log(m / alpha) - j) / alpha if kl_over_alpha else -j
    estimate = j if alpha < floor else None
    return loss, ml_cpc_j(p, q, bound_alpha), math.log(m / bound_alpha), estimate


def ref_ring(pos, neg, outer, inner):
    p, q = rows(pos, neg)
    k = len(q[0])
    # exact decimal arithmetic: the thresholds as a person would compute them; floor as the reference code
    n_out = max(1, math.floor(Fraction(str(outer)) * k))
    n_in = math.floor(Fraction(str(inner)) * n_out)
    total = 0.0
    for i in range(len(p)):
        kept = sorted(q[i], reverse=True)[n_in:n_out]
        denom = math.exp(p[i]) + sum(math.exp(x) for x in kept)
        total += math.log(denom) - p[i]
    loss = total / len(p)
    estimate = None if (n_in, n_out) == (0, k) else math.log(1 + n_out - n_in) - loss
    _, mi, ceiling, _ = ref_infonce(pos, neg)  # .mi: InfoNCE over all K negatives
    return loss, mi, ceiling, estimate


def ref_hcl(pos, neg, beta, tau_plus, temperature):
    p, q = rows(pos, neg)
    k = len(q[0])
    total = 0.0
    for i in range(len(p)):
        e_pos = math.exp(p[i])
        w = [math.exp(beta * x) for x in q[i]]
        reweighted = sum(wj * math.exp(x) for wj, x in zip(w, q[i])) / (sum(w) / k)
        ng = max((reweighted - tau_plus * k * e_pos) / (1 - tau_plus), k * math.exp(-1 / temperature))
        total += -math.log(e_pos / (e_pos + ng))
    return total / len(p), *ref_infonce(pos, neg)[1:]


def ref_nwj(pos, neg):
    p, q = rows(pos, neg)
    flat = [x for r in q for x in r]
    mi = sum(p) / len(p) - math.exp(-1) * sum(math.exp(x) for x in flat) / len(flat)
    return -mi, mi, math.inf, None


def softplus(x):
    return math.log1p(math.exp(x))


def ref_js(pos, neg):
    p, q = rows(pos, neg)
    flat = [x for r in q for x in r]
    loss = sum(softplus(-x) for x in p) / len(p) + sum(softplus(x) for x in flat) / len(flat)
    return loss, *ref_nwj(pos, neg)[1:]


CASES = [
    ("infonce", {}, ref_infonce),
    ("ml_cpc", {"alpha": 1.0}, lambda p, q: ref_ml_cpc(p, q, 1.0)),
    ("ml_cpc", {"alpha": 0.5}, lambda p, q: ref_ml_cpc(p, q, 0.5)),
    ("ml_cpc", {"alpha": 0.01}, lambda p, q: ref_ml_cpc(p, q, 0.01)),
    ("ml_cpc", {"alpha": 0.2, "kl_over_alpha": True}, lambda p, q: ref_ml_cpc(p, q, 0.2, True)),
    ("ring", {}, lambda p, q: ref_ring(p, q, 0.1, 0.1)),
    ("ring", {"outer": 1.0, "inner": 0.0}, lambda p, q: ref_ring(p, q, 1.0, 0.0)),  # n_out = K, n_in = 0
    ("ring", {"outer": 0.5, "inner": 0.3}, lambda p, q: ref_ring(p, q, 0.5, 0.3)),
    ("ring", {"outer": 1.0, "inner": 0.5}, lambda p, q: ref_ring(p, q, 1.0, 0.5)),
    ("ring", {"outer": 0.01, "inner": 0.0}, lambda p, q: ref_ring(p, q, 0.01, 0.0)),  # n_out = 1
    ("ring", {"outer": 0.15, "inner": 0.0}, lambda p, q: ref_ring(p, q, 0.15, 0.0)),  # floor, not ceil
    ("hard_negative", {}, lambda p, q: ref_hcl(p, q, 1.0, 0.1, 0.5)),
    ("hard_negative", {"beta": 0.5, "tau_plus": 0.0}, lambda p, q: ref_hcl(p, q, 0.5, 0.0, 0.5)),
    ("hard_negative", {"beta": 2.0, "tau_plus": 0.3, "temperature": 0.1},
     lambda p, q: ref_hcl(p, q, 2.0, 0.3, 0.1)),
    ("debiased", {}, lambda p, q: ref_hcl(p, q, 0.0, 0.1, 0.5)),
    ("debiased", {"tau_plus": 0.4, "temperature": 2.0}, lambda p, q: ref_hcl(p, q, 0.0, 0.4, 2.0)),
    ("nwj", {}, ref_nwj),
    ("js", {}, ref_js),
]


def case_id(case):
    name, kw, _ = case
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("n,k", SIZES)
def test_matches_loop_reference(case, n, k):
    name, kw, ref = case
    obj = build(name, **kw)
    for seed in range(2):
        pos, neg = scores(n, k, seed=100 * n + k + seed)
        out = obj(pos, neg)
        loss, mi, ceiling, estimate = ref(pos, neg)
        assert out.loss.dtype == torch.float64
        assert out.loss.item() == pytest.approx(loss, abs=1e-6, rel=1e-9)
        assert out.mi.item() == pytest.approx(mi, abs=1e-6, rel=1e-9)
        assert out.ceiling == pytest.approx(ceiling, rel=1e-12)
        assert out.log_m == pytest.approx(math.log(k + 1))
        if estimate is None:
            assert out.estimate is None
        else:
            assert out.estimate.item() == pytest.approx(estimate, abs=1e-6, rel=1e-9)


def test_hard_negative_floor_branch_matches_reference():
    # easy positives and a large class prior: the debiased estimate goes negative
    # and the floor K exp(-1/t) takes over
    pos, neg = scores(6, 8, seed=3)
    pos = pos + 6.0
    obj = build("hard_negative", beta=1.0, tau_plus=0.5, temperature=0.5)
    loss = ref_hcl(pos, neg, 1.0, 0.5, 0.5)[0]
    assert obj(pos, neg).loss.item() == pytest.approx(loss, abs=1e-6)
    # with every row on the floor the loss is softplus(log K - 1/t - pos)
    floor = torch.nn.functional.softplus(math.log(8) - 2.0 - pos).mean()
    assert obj(pos, neg).loss.item() == pytest.approx(floor.item(), abs=1e-9)


@pytest.mark.parametrize(
    "outer,inner,k,expected",
    [
        (0.07, 0.1, 100, (0, 7)),  # 0.07 * 100 is 7.000000000000001 in floating point
        (1.0, 0.29, 100, (29, 100)),  # 0.29 * 100 is 28.999999999999996
        (0.1, 0.1, 30, (0, 3)),
        (1.0, 0.0, 7, (0, 7)),
        (0.01, 0.5, 7, (0, 1)),  # at least one negative (the reference code would keep none)
        (0.5, 0.5, 9, (2, 4)),  # floor(4.5) = 4, as the reference code's int()
        (0.15, 0.0, 10, (0, 1)),
    ],
)
def test_ring_ranks(outer, inner, k, expected):
    assert build("ring", outer=outer, inner=inner).ranks(k) == expected


def test_ring_keeps_the_band_of_negatives():
    # one row, negatives 0..9 (all below the positive): outer 0.5, inner 0.4 keeps
    # ranks 2..4 of the sorted list, i.e. the scores 7, 6, 5
    pos = torch.tensor([20.0], dtype=torch.float64)
    neg = torch.arange(10, dtype=torch.float64).flip(0)[torch.randperm(10)].unsqueeze(0)
    out = build("ring", outer=0.5, inner=0.4)(pos, neg)
    kept = torch.tensor([20.0, 7.0, 6.0, 5.0], dtype=torch.float64)
    assert out.loss.item() == pytest.approx((torch.logsumexp(kept, 0) - 20.0).item(), abs=1e-12)


# ---- gradcheck ----------------------------------------------------------------

GRAD_CASES = [
    ("infonce", {}),
    ("ml_cpc", {"alpha": 1.0}),
    ("ml_cpc", {"alpha": 0.05}),
    ("ml_cpc", {"alpha": 0.05, "kl_over_alpha": True}),
    ("ring", {"outer": 0.6, "inner": 0.2}),
    ("ring", {"outer": 1.0, "inner": 0.0}),
    ("hard_negative", {}),
    ("hard_negative", {"beta": 0.5, "tau_plus": 0.0}),
    ("debiased", {"tau_plus": 0.2}),
    ("nwj", {}),
    ("js", {}),
]


def untied(n, k, seed):
    """Scores whose negatives are at least 0.01 apart within a row (ring sorts them)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, generator=g, dtype=torch.float64)
    grid = torch.arange(k, dtype=torch.float64) * 0.3 - 0.15 * k
    neg = torch.stack([grid[torch.randperm(k, generator=g)] for _ in range(n)])
    neg = neg + torch.rand(n, k, generator=g, dtype=torch.float64) * 0.1
    return pos.requires_grad_(), neg.requires_grad_()


@pytest.mark.parametrize("name,kw", GRAD_CASES, ids=[case_id((n, kw, None)) for n, kw in GRAD_CASES])
def test_gradcheck(name, kw):
    obj = build(name, **kw)
    pos, neg = untied(4, 6, seed=7)
    assert torch.autograd.gradcheck(lambda p, q: obj(p, q).loss, (pos, neg), eps=1e-6, atol=1e-6)


def test_gradcheck_hard_negative_debiased_branch():
    # scores where (reweighted - tau_plus K p) is well above the floor in every row
    obj = build("hard_negative", beta=1.0, tau_plus=0.3, temperature=0.2)
    pos, neg = untied(4, 6, seed=11)
    with torch.no_grad():
        pos -= 2.0
    from infoview.objectives.hard_negative import log_debiased_negatives

    log_ng = log_debiased_negatives(pos, neg, 1.0, 0.3, 0.2)
    assert (log_ng > math.log(6) - 1 / 0.2 + 0.5).all()
    assert torch.autograd.gradcheck(lambda p, q: obj(p, q).loss, (pos, neg), eps=1e-6, atol=1e-6)
