"""Scores from embeddings: in-batch (SimCLR), a score matrix, a MoCo queue."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infoview.objectives import build, in_batch_pairs, matrix_pairs, queue_logits


def gen(seed):
    return torch.Generator().manual_seed(seed)


def nt_xent_logits(z1, z2, t):
    """SimCLR's logits written out: 2B x 2B cosine matrix, self-similarity removed."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b2 = z.shape[0]
    sim = z @ z.t() / t
    targets = (torch.arange(b2) + b2 // 2) % b2
    return sim, targets


def test_two_views_are_nt_xent():
    g = gen(0)
    b, d, t = 5, 8, 0.1
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    pos, neg = in_batch_pairs([z1, z2], temperature=t)
    assert pos.shape == (2 * b,) and neg.shape == (2 * b, 2 * b - 2)
    sim, targets = nt_xent_logits(z1, z2, t)
    for r in range(2 * b):
        assert pos[r].item() == pytest.approx(sim[r, targets[r]].item(), abs=1e-5)
        others = [c for c in range(2 * b) if c not in (r, targets[r].item())]
        torch.testing.assert_close(neg[r], sim[r, others])
    # InfoNCE on these rows is SimCLR's cross-entropy (self-similarity masked), shifted by log m
    masked = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), -math.inf)
    ce = F.cross_entropy(masked, targets)
    out = build("infonce")(pos, neg)
    assert out.loss.item() == pytest.approx(ce.item() - math.log(2 * b - 1), abs=1e-5)


def test_tensor_and_list_inputs_agree_and_dot_product_mode():
    g = gen(1)
    views = torch.randn(2, 4, 3, generator=g)
    a = in_batch_pairs(views, temperature=0.5)
    b = in_batch_pairs(list(views), temperature=0.5)
    torch.testing.assert_close(a, b)
    pos, _ = in_batch_pairs(views, temperature=0.5, normalize=False)
    assert pos[0].item() == pytest.approx((views[0, 0] @ views[1, 0]).item() / 0.5, rel=1e-5)


def test_three_views_shapes_and_positive_count():
    # images are orthogonal one-hot directions and each image's views coincide:
    # cosine 1 exactly for same-image pairs, 0 for everything else
    v, b, t = 3, 4, 0.5
    base_ = torch.eye(b, 6)
    views = torch.stack([base_ * (i + 1) for i in range(v)])  # same direction, different norms
    pos, neg = in_batch_pairs(views, temperature=t)
    assert pos.shape == (v * (v - 1) * b,)
    assert neg.shape == (v * (v - 1) * b, v * (b - 1))
    assert torch.allclose(pos, torch.full_like(pos, 1 / t))  # every row's positive is a same-image view
    assert (neg.abs() < 1e-6).all()  # and no same-image pair sneaks into the negatives


def test_three_views_rows_are_ordered_anchor_other_image():
    g = gen(2)
    v, b = 3, 3
    views = torch.randn(v, b, 4, generator=g)
    z = F.normalize(views, dim=-1)
    pos, neg = in_batch_pairs(views, temperature=1.0)
    row = 0
    for a in range(v):
        for w in [x for x in range(v) if x != a]:
            for i in range(b):
                assert pos[row].item() == pytest.approx((z[a, i] @ z[w, i]).item(), abs=1e-6)
                expect = torch.stack([z[a, i] @ z[w2, j] for w2 in range(v) for j in range(b) if j != i])
                torch.testing.assert_close(neg[row], expect)
                row += 1


def test_gathered_batch_split_in_two_reproduces_full_batch():
    g = gen(3)
    v, b, d = 3, 6, 5
    full = torch.randn(v, b, d, generator=g, requires_grad=True)
    pos, neg = in_batch_pairs(full, temperature=0.2)
    k = v * (b - 1)
    pos = pos.reshape(v, v - 1, b)
    neg = neg.reshape(v, v - 1, b, k)
    for lo, hi in [(0, 3), (3, 6)]:
        # the gathered tensor carries gradients back to every rank's embeddings
        lp, ln = in_batch_pairs(full[:, lo:hi], temperature=0.2, all_views=full, offset=lo)
        assert lp.shape == (v * (v - 1) * (hi - lo),) and ln.shape == (v * (v - 1) * (hi - lo), k)
        torch.testing.assert_close(lp.reshape(v, v - 1, hi - lo), pos[:, :, lo:hi])
        torch.testing.assert_close(ln.reshape(v, v - 1, hi - lo, k), neg[:, :, lo:hi])
    lp, ln = in_batch_pairs(full[:, 3:], temperature=0.2, all_views=full, offset=3)
    build("infonce")(lp, ln).loss.backward()
    assert full.grad[:, :3].abs().sum() > 0  # remote images get gradient through the gather


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(views=torch.zeros(1, 4, 3)), "at least 2 views"),
        (dict(views=torch.zeros(4, 3)), r"\(V, B, D\)"),
        (dict(views=torch.zeros(2, 1, 3)), "at least 2 images"),
        (dict(views=[torch.zeros(4, 3), torch.zeros(5, 3)]), "same"),
        (dict(views=torch.zeros(2, 4, 3), temperature=0.0), "temperature"),
        (dict(views=torch.zeros(2, 4, 3), all_views=torch.zeros(2, 8, 5)), "all_views"),
        (dict(views=torch.zeros(2, 4, 3), all_views=torch.zeros(2, 8, 3), offset=6), "offset"),
        (dict(views=torch.zeros(2, 4, 3), offset=2), "offset"),
    ],
)
def test_in_batch_pairs_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        in_batch_pairs(**kwargs)


def test_matrix_pairs():
    s = torch.arange(9.0).reshape(3, 3)
    pos, neg = matrix_pairs(s)
    assert pos.tolist() == [0.0, 4.0, 8.0]
    assert neg.tolist() == [[1.0, 2.0], [3.0, 5.0], [6.0, 7.0]]
    with pytest.raises(ValueError, match="square"):
        matrix_pairs(torch.zeros(2, 3))


def test_queue_logits():
    g = gen(4)
    b, q_len, d, t = 4, 7, 5, 0.2
    q, k = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    queue = torch.randn(q_len, d, generator=g)
    pos, neg = queue_logits(q, k, queue, temperature=t)
    assert pos.shape == (b,) and neg.shape == (b, q_len)
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    for i in range(b):
        assert pos[i].item() == pytest.approx((qn[i] @ kn[i]).item() / t, abs=1e-5)
        for j in range(q_len):
            assert neg[i, j].item() == pytest.approx((qn[i] @ un[j]).item() / t, abs=1e-5)
    pos_raw, neg_raw = queue_logits(q, k, queue, temperature=1.0, normalize=False)
    torch.testing.assert_close(neg_raw, q @ queue.t())
    torch.testing.assert_close(pos_raw, (q * k).sum(1))
    with pytest.raises(ValueError, match="queue"):
        queue_logits(q, k, torch.zeros(7, d + 1))


# ---- scores in float32, autocast or not ----------------------------------------


def _builders():
    from infoview.models import MemoryBank
    from infoview.objectives import bank_logits, cross_view_pairs

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 32, generator=g)
    queue = torch.randn(64, 32, generator=g).bfloat16().float()  # exact in bf16 too
    bank = MemoryBank(100, 32, seed=0)
    bank.bank.copy_(bank.bank.bfloat16().float())
    drawn = bank.negatives(torch.arange(16), 20, generator=torch.Generator().manual_seed(1))
    return {
        "bank": lambda t: bank_logits(t[0], t[1], drawn.to(t.dtype), temperature=0.07),
        "in_batch": lambda t: in_batch_pairs(t, temperature=0.1),
        "in_batch_gathered": lambda t: in_batch_pairs(t[:, 4:12], temperature=0.1, all_views=t, offset=4),
        "queue": lambda t: queue_logits(t[0], t[1], queue.to(t.dtype), temperature=0.2),
        "cross_view": lambda t: cross_view_pairs(t[0], t[1], temperature=0.1),
    }, z


@pytest.mark.parametrize("path", ["in_batch", "in_batch_gathered", "queue", "cross_view", "bank"])
def test_scores_are_float32_under_bf16_autocast(path):
    builders, z = _builders()
    build_scores = builders[path]
    ref_pos, ref_neg = build_scores(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pos, neg = build_scores(z)
    assert pos.dtype == neg.dtype == torch.float32
    # bit for bit the float32 scores: no matmul ran in bf16 (that would round to ~3 digits and tie scores)
    torch.testing.assert_close(pos, ref_pos, rtol=0, atol=0)
    torch.testing.assert_close(neg, ref_neg, rtol=0, atol=0)


@pytest.mark.parametrize("path", ["in_batch", "queue", "cross_view", "bank"])
def test_bf16_embeddings_are_upcast_before_the_matmul(path):
    builders, z = _builders()
    build_scores = builders[path]
    z16 = z.bfloat16()
    pos, neg = build_scores(z16)
    ref_pos, ref_neg = build_scores(z16.float())
    assert pos.dtype == torch.float32
    torch.testing.assert_close(neg, ref_neg, rtol=0, atol=0)
    torch.testing.assert_close(pos, ref_pos, rtol=0, atol=0)


def test_bank_logits_score_each_row_against_its_own_negatives():
    from infoview.objectives import bank_logits

    g = torch.Generator().manual_seed(2)
    q, k, negs = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    pos, neg = bank_logits(q, k, negs, temperature=0.5)
    qn, kn, nn_ = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(negs, dim=-1)
    torch.testing.assert_close(pos, (qn * kn).sum(-1) / 0.5)
    for i in range(4):
        torch.testing.assert_close(neg[i], nn_[i] @ qn[i] / 0.5)
    with pytest.raises(ValueError, match="negatives must be"):
        bank_logits(q, k, torch.randn(3, 5, 8))


# masked rows: the negatives left in the score matrix, their own image's columns -inf

MASKED_CASES = [
    ("infonce", {}), ("ml_cpc", {"alpha": 0.1}), ("ml_cpc", {"alpha": 1e-4}), ("ring", {"outer": 0.3, "inner": 0.2}),
    ("ring", {}), ("hard_negative", {"beta": 1.0, "tau_plus": 0.1}), ("hard_negative", {"beta": -0.5}),
    ("hard_negative", {"beta": -2.0, "tau_plus": 0.0}), ("debiased", {"tau_plus": 0.1}), ("nwj", {}), ("js", {}),
]


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("name, kw", MASKED_CASES, ids=lambda x: str(x))
def test_masked_rows_give_every_objective_the_same_figures_and_gradients(name, kw, views):
    g = gen(7)
    b, d, t = 6, 5, 0.3
    z = torch.randn(views, b, d, generator=g, dtype=torch.float64)
    figures = []
    for masked in (False, True):
        zz = z.clone().requires_grad_(True)
        obj = build(name, **kw)
        if masked:
            pos, neg, k = in_batch_pairs(zz, temperature=t, masked=True)
            assert neg.shape == (views * (views - 1) * b, views * b) and k == views * (b - 1)
            assert (neg == -math.inf).sum(dim=1).eq(views).all()
            out = obj(pos, neg, k)
        else:
            pos, neg = in_batch_pairs(zz, temperature=t)
            out = obj(pos, neg)
        out.loss.backward()
        est = None if out.estimate is None else out.estimate.item()
        figures.append((out.loss.item(), out.mi.item(), out.ceiling, out.log_m, est, zz.grad))
    (l0, mi0, c0, lm0, e0, g0), (l1, mi1, c1, lm1, e1, g1) = figures
    assert l1 == pytest.approx(l0, rel=1e-12, abs=1e-12) and mi1 == pytest.approx(mi0, rel=1e-12, abs=1e-12)
    assert (c1, lm1) == (c0, lm0) and (e1 is None) == (e0 is None)
    if e0 is not None:
        assert e1 == pytest.approx(e0, rel=1e-12)
    assert torch.isfinite(g1).all()
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)


def test_masked_rows_of_a_gathered_batch_match_the_compact_ones():
    g = gen(8)
    z = torch.randn(2, 8, 4, generator=g)
    for offset in (0, 4):
        local = z[:, offset:offset + 4]
        pos0, neg0 = in_batch_pairs(local, 0.2, all_views=z, offset=offset)
        pos1, neg1, k = in_batch_pairs(local, 0.2, all_views=z, offset=offset, masked=True)
        torch.testing.assert_close(pos1, pos0)
        assert k == neg0.shape[1] and neg1.shape == (8, 16)
        torch.testing.assert_close(neg1[neg1 != -math.inf].view(8, k), neg0, rtol=1e-6, atol=1e-6)


def test_a_wrong_count_of_negatives_is_refused():
    pos, neg, k = in_batch_pairs(torch.randn(2, 4, 3, generator=gen(9)), 0.5, masked=True)
    obj = build("infonce")
    with pytest.raises(ValueError, match=r"exactly 7 scores other than -inf, but rows hold 6 to 6"):
        obj(pos, neg, k + 1)  # a larger k would raise log m: the bound would not hold
    with pytest.raises(ValueError, match="k .negatives per row. must be an integer in 1..8"):
        obj(pos, neg, 9)
    neg2 = neg.clone()
    neg2[0, neg2[0] != -math.inf] = -math.inf
    neg2[0, 0] = 0.0
    with pytest.raises(ValueError, match="rows hold 1 to 6"):
        obj(pos, neg2, k)


def test_an_objective_without_k_gets_the_negatives_copied_out(monkeypatch):
    from infoview.objectives import Objective, Terms, base, register

    monkeypatch.setattr(base._OBJECTIVES, "items", dict(base._OBJECTIVES.items))
    seen = []

    @register("plain_lse")
    class PlainLSE(Objective):
        def compute(self, pos, neg):
            seen.append(tuple(neg.shape))
            loss = (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()
            return Terms(loss, -loss, math.log(neg.shape[1] + 1))

    z = torch.randn(2, 5, 3, generator=gen(10))
    pos, neg, k = in_batch_pairs(z, 0.5, masked=True)
    masked = build("plain_lse")(pos, neg, k)
    pos0, neg0 = in_batch_pairs(z, 0.5)
    plain = build("plain_lse")(pos0, neg0)
    assert seen == [(10, 8), (10, 8)]
    assert masked.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6) and masked.log_m == plain.log_m
