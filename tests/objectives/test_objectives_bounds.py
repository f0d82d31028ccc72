"""What the .mi values certify (their ceilings and orderings) and numerical
stability at extreme scores and in bfloat16."""
from __future__ import annotations

import math

import pytest
import torch

from infoview.objectives import alpha_floor, available, build, matrix_pairs

ALL = available()  # every registered objective: registering one tests it


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- ceilings and orderings ------------------------------------------------------


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
def test_infonce_never_exceeds_log_m(scale):
    obj = build("infonce")
    g = gen(int(scale * 10))
    for n, k in [(1, 1), (8, 3), (16, 63)]:
        pos = torch.randn(n, generator=g) * scale + scale  # tilted towards the positive
        neg = torch.randn(n, k, generator=g) * scale
        out = obj(pos, neg)
        assert out.mi.item() <= out.log_m + 1e-5


def test_infonce_saturates_at_log_m_on_adversarial_scores():
    obj = build("infonce")
    for k in [1, 7, 255]:
        pos = torch.full((4,), 1e4)
        neg = torch.full((4, k), -1e4)
        out = obj(pos, neg)
        assert out.mi.item() <= out.log_m + 1e-6
        assert out.mi.item() == pytest.approx(math.log(k + 1), abs=1e-5)  # the ceiling is reached
        assert out.loss.item() == pytest.approx(-math.log(k + 1), abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_ml_cpc_alpha_1_never_exceeds_infonce_on_in_batch_scores(seed):
    g = gen(seed)
    n = 3 + 5 * seed
    scale = [0.3, 1.0, 3.0, 10.0, 30.0][seed]
    matrix = torch.randn(n, n, generator=g, dtype=torch.float64) * scale
    matrix += torch.eye(n, dtype=torch.float64) * scale  # some signal on the diagonal
    pos, neg = matrix_pairs(matrix)
    ml = build("ml_cpc", alpha=1.0)(pos, neg).mi.item()
    nce = build("infonce")(pos, neg).mi.item()
    assert ml <= nce + 1e-9


def test_ml_cpc_alpha_1_is_strictly_below_infonce_when_rows_differ():
    # rows with very different normalisers: pooling them costs the bound
    matrix = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 2.0], [3.0, 3.0, 4.0]], dtype=torch.float64)
    pos, neg = matrix_pairs(matrix)
    assert build("ml_cpc")(pos, neg).mi.item() < build("infonce")(pos, neg).mi.item() - 0.1


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.01, 1e-4])
def test_ml_cpc_small_alpha_can_exceed_log_m_up_to_its_ceiling(alpha):
    n = 16
    g = gen(1)
    easy = torch.randn(n, n, generator=g) * (1 - torch.eye(n)) + 30.0 * torch.eye(n)  # positives stand far out
    pos, neg = matrix_pairs(easy)
    out = build("ml_cpc", alpha=alpha)(pos, neg)
    bound_alpha = max(alpha, alpha_floor(n, n))  # 16 / 241 = 0.066: below it .mi is taken at the floor
    assert out.ceiling == pytest.approx(math.log(n / bound_alpha))
    assert out.mi.item() > out.log_m + 0.5 * math.log(1 / bound_alpha)  # beyond InfoNCE's ceiling
    assert out.mi.item() <= out.ceiling + 1e-5
    assert out.mi.item() == pytest.approx(out.ceiling, abs=1e-3)  # and reaches its own
    if alpha < bound_alpha:  # the training value at alpha is kept, as an estimate, up to log(m / alpha)
        assert out.estimate.item() == pytest.approx(math.log(n / alpha), abs=1e-3)
    else:
        assert out.estimate is None
    assert build("infonce")(pos, neg).mi.item() <= out.log_m + 1e-5


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.01])
def test_ml_cpc_stays_below_its_ceiling_on_random_scores(alpha):
    g = gen(2)
    obj = build("ml_cpc", alpha=alpha)
    for scale in [0.1, 3.0, 100.0]:
        pos = torch.randn(10, generator=g) * scale + scale
        neg = torch.randn(10, 9, generator=g) * scale
        out = obj(pos, neg)
        assert out.mi.item() <= out.ceiling + 1e-4
        assert out.ceiling <= math.log(10 / alpha) + 1e-12
        if out.estimate is not None:
            assert out.estimate.item() <= math.log(10 / alpha) + 1e-4


def test_ml_cpc_kl_over_alpha_is_the_authors_loss():
    # the authors' code: KLDivLoss(log_softmax(weighted logits), labels 1/N on the positives) / alpha
    import torch.nn.functional as F

    g = gen(3)
    pos, neg = torch.randn(6, generator=g, dtype=torch.float64) + 1, torch.randn(6, 9, generator=g, dtype=torch.float64)
    alpha, m = 0.3, 10
    beta = (m - alpha) / (m - 1)
    logits = torch.cat([pos[:, None] + math.log(alpha), neg + math.log(beta)], 1).view(1, -1)
    labels = torch.zeros(6, m, dtype=torch.float64)
    labels[:, 0] = 1 / 6
    ref = F.kl_div(F.log_softmax(logits, 1), labels.view(1, -1), reduction="batchmean") / alpha
    ours = build("ml_cpc", alpha=alpha, kl_over_alpha=True)(pos, neg)
    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-10)
    plain = build("ml_cpc", alpha=alpha)(pos, neg)
    assert ours.mi.item() == pytest.approx(plain.mi.item())  # what it certifies does not change


def test_ml_cpc_rejects_alpha_above_m():
    obj = build("ml_cpc", alpha=5.0)
    with pytest.raises(ValueError, match="alpha"):
        obj(torch.zeros(3), torch.zeros(3, 2))  # m = 3 < alpha
    out = obj(torch.zeros(3), torch.zeros(3, 4))  # m = 5 = alpha: negatives get weight 0
    assert torch.isfinite(out.loss)
    # certifying on rows with fewer candidates (a cross-view matrix) moves alpha down to m instead
    cert = obj.bound(torch.zeros(3), torch.zeros(3, 2))
    assert cert.ceiling == 0.0 and cert.mi.item() == pytest.approx(0.0, abs=1e-6)
    g = gen(11)
    pos, neg = torch.randn(6, generator=g), torch.randn(6, 7, generator=g)
    assert obj.bound(pos, neg).mi.item() == pytest.approx(obj(pos, neg).mi.item())  # otherwise the call itself


def test_ring_reports_infonce_over_all_negatives_and_keeps_its_restricted_value_as_an_estimate():
    obj = build("ring", outer=0.5, inner=0.25)
    n_in, n_out = obj.ranks(40)
    assert (n_in, n_out) == (5, 20)
    pos = torch.full((3,), 1e4)
    neg = torch.randn(3, 40)
    out = obj(pos, neg)
    assert out.estimate.item() == pytest.approx(math.log(1 + n_out - n_in), abs=1e-5)
    assert out.mi.item() == pytest.approx(math.log(41), abs=1e-5) and out.ceiling == pytest.approx(math.log(41))


def test_ring_without_ring_is_infonce():
    g = gen(3)
    pos, neg = torch.randn(6, generator=g), torch.randn(6, 11, generator=g)
    ring = build("ring", outer=1.0, inner=0.0)(pos, neg)
    nce = build("infonce")(pos, neg)
    assert ring.mi.item() == pytest.approx(nce.mi.item(), abs=1e-6)


def test_debiased_objectives_report_the_infonce_bound():
    g = gen(4)
    pos, neg = torch.randn(6, generator=g), torch.randn(6, 11, generator=g)
    nce = build("infonce")(pos, neg).mi
    for name in ["hard_negative", "debiased"]:
        assert build(name)(pos, neg).mi.item() == pytest.approx(nce.item(), abs=1e-6)
    # with no reweighting and no class prior HCL's loss is InfoNCE's cross-entropy
    hcl = build("hard_negative", beta=0.0, tau_plus=0.0, temperature=1e-3)(pos, neg)
    assert hcl.loss.item() == pytest.approx(-nce.item() + math.log(12), abs=1e-5)


def test_mi_is_detached_and_loss_is_differentiable():
    for name in available():
        pos = torch.randn(5, requires_grad=True)
        neg = torch.randn(5, 4, requires_grad=True)
        out = build(name)(pos, neg)
        assert out.loss.requires_grad and out.loss.dim() == 0
        assert not out.mi.requires_grad and out.mi.dim() == 0


# ---- stability --------------------------------------------------------------


def extreme(n, k, seed, neg_sign=None):
    """Scores of +-1e4: mixed signs, or negatives all of one sign."""
    g = gen(seed)
    pos = torch.where(torch.rand(n, generator=g) < 0.5, -1e4, 1e4)
    if neg_sign is None:
        neg = torch.where(torch.rand(n, k, generator=g) < 0.5, -1e4, 1e4)
    else:
        neg = torch.full((n, k), neg_sign * 1e4)
    neg = neg + torch.randn(n, k, generator=g)  # break ties
    return pos, neg


def value_and_grads(obj, pos, neg):
    pos = pos.detach().clone().requires_grad_()
    neg = neg.detach().clone().requires_grad_()
    out = obj(pos, neg)
    out.loss.backward()
    return out, pos.grad, neg.grad


STABLE_EVERYWHERE = ["infonce", "ml_cpc", "ring", "hard_negative", "debiased"]


@pytest.mark.parametrize("name", STABLE_EVERYWHERE)
@pytest.mark.parametrize("neg_sign", [None, 1, -1])
def test_extreme_scores_are_finite_and_match_float64(name, neg_sign):
    obj = build(name)
    pos, neg = extreme(6, 10, seed=5, neg_sign=neg_sign)
    out, gp, gn = value_and_grads(obj, pos, neg)
    for t in (out.loss, out.mi, gp, gn):
        assert torch.isfinite(t).all(), name
    ref = obj(pos.double(), neg.double())
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5, abs=1e-2)
    assert out.mi.item() == pytest.approx(ref.mi.item(), rel=1e-5, abs=1e-2)


@pytest.mark.parametrize("name", ["nwj", "js"])
def test_variational_bounds_with_extreme_positives_and_low_negatives(name):
    obj = build(name)
    pos, neg = extreme(6, 10, seed=6, neg_sign=-1)
    out, gp, gn = value_and_grads(obj, pos, neg)
    for t in (out.loss, out.mi, gp, gn):
        assert torch.isfinite(t).all()
    assert out.mi.item() == pytest.approx(pos.double().mean().item(), abs=1e-2)


def test_nwj_overflows_to_minus_inf_not_nan():
    # a negative score of 1e4 makes e^{f-1} overflow: the bound is vacuous (-inf)
    pos, neg = extreme(6, 10, seed=7)
    out, gp, gn = value_and_grads(build("nwj"), pos, neg)
    assert out.mi.item() == -math.inf and out.loss.item() == math.inf
    assert not torch.isnan(gp).any() and not torch.isnan(gn).any()
    assert torch.isfinite(gp).all()
    # elements whose exp does not overflow keep their exact gradient
    low = neg < 0
    assert torch.equal(gn[low], torch.exp(neg[low] - 1) * -1 / neg.numel())


def test_nwj_value_near_float32_overflow_is_accurate():
    # exp(90) overflows float32 but the mean of exp(neg - 1) is about e^89 / 10: finite
    neg = torch.full((1, 10), -50.0)
    neg[0, 0] = 90.0
    out = build("nwj")(torch.zeros(1), neg)
    assert torch.isfinite(out.mi)
    assert out.mi.item() == pytest.approx(-math.exp(89) / 10, rel=1e-4)


def test_js_loss_stays_finite_when_its_nwj_estimate_overflows():
    pos, neg = extreme(6, 10, seed=8)
    out, gp, gn = value_and_grads(build("js"), pos, neg)
    assert torch.isfinite(out.loss) and out.mi.item() == -math.inf
    assert torch.isfinite(gp).all() and torch.isfinite(gn).all()


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_inputs_compute_in_float32(name):
    obj = build(name)
    g = gen(9)
    pos32 = torch.randn(16, generator=g) * 3 + 2
    neg32 = torch.randn(16, 31, generator=g) * 3
    pos16 = pos32.bfloat16().requires_grad_()
    neg16 = neg32.bfloat16().requires_grad_()
    out = obj(pos16, neg16)
    assert out.loss.dtype == torch.float32 and out.mi.dtype == torch.float32
    out.loss.backward()
    assert pos16.grad.dtype == torch.bfloat16 and torch.isfinite(pos16.grad.float()).all()
    assert torch.isfinite(neg16.grad.float()).all()
    # identical to float32 on the rounded scores: nothing was computed in bf16
    same = obj(pos16.detach().float(), neg16.detach().float())
    assert out.loss.item() == pytest.approx(same.loss.item(), rel=1e-6, abs=1e-6)
    # and close to float32 on the unrounded ones (bf16 keeps ~3 significant digits)
    ref = obj(pos32, neg32)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=2e-2, abs=5e-2)
    assert out.mi.item() == pytest.approx(ref.mi.item(), rel=2e-2, abs=5e-2)


@pytest.mark.parametrize("name", STABLE_EVERYWHERE)
def test_bfloat16_extreme_scores(name):
    pos, neg = extreme(4, 6, seed=10)
    out, gp, gn = value_and_grads(build(name), pos.bfloat16(), neg.bfloat16())
    for t in (out.loss, out.mi, gp.float(), gn.float()):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("gap_ulps", [0, 1, 3])
def test_debiased_gradient_at_the_kink_is_not_nan(gap_ulps):
    # tau_plus K p within a few float32 ulps of the reweighted sum: the debiased
    # difference is (almost) zero, the floor wins, and no NaN may leak from the
    # unused branch of log(1 - e^d)
    from infoview.objectives.hard_negative import log_debiased_negatives

    neg = torch.full((1, 2), 0.01 - math.log(2.0))
    log_rw = log_debiased_negatives(torch.zeros(1), neg, 0.0, 0.0, 0.5)  # tau_plus 0: log reweighted
    pos = log_rw.clone()
    for _ in range(gap_ulps):
        pos = torch.nextafter(pos, torch.tensor(-math.inf))
    obj = build("debiased", tau_plus=0.5)  # tau_plus K = 1
    out, gp, gn = value_and_grads(obj, pos, neg)
    assert torch.isfinite(out.loss) and torch.isfinite(gp).all() and torch.isfinite(gn).all()
