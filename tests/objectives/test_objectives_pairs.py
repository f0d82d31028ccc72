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
