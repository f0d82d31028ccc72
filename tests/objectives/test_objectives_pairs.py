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
