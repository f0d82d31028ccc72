"""The row-chunked log-sum-exp equals torch.logsumexp, values and gradients, -inf entries included."""
from __future__ import annotations

import math

import pytest
import torch

from infoview.objectives import build, in_batch_pairs, lse


def scores(seed=0, n=12, m=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=dtype) * 3
    x[torch.arange(n), torch.arange(n) % m] = -math.inf  # one non-candidate per row
    return x


@pytest.mark.parametrize("scales", [(1.0,), (2.0, 1.0), (0.5, -0.5), (0.0, -2.0)])
@pytest.mark.parametrize("chunk", [1, 20, 1000])
def test_chunked_rows_match_torch(monkeypatch, scales, chunk):
    monkeypatch.setattr(lse, "CHUNKED_FROM", 0)
    monkeypatch.setattr(lse, "CHUNK", chunk)
    x = scores().requires_grad_(True)
    w = torch.randn(x.shape[0], len(scales), generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    got = lse.row_lse(x, scales)
    (got * w).sum().backward()
    g_got, x.grad = x.grad, None
    want = torch.stack([torch.logsumexp(torch.where(x == -math.inf, x, x * c), 1) for c in scales], 1)
    (want * w).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(g_got).all() and (g_got[x.detach() == -math.inf] == 0).all()
    torch.testing.assert_close(g_got, x.grad, rtol=1e-12, atol=1e-12)


def test_chunked_gradient_is_the_derivative(monkeypatch):
    monkeypatch.setattr(lse, "CHUNKED_FROM", 0)
    monkeypatch.setattr(lse, "CHUNK", 7)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lse.row_lse(t, (1.5, -0.7)), (x,))


@pytest.mark.parametrize("name, kw", [("infonce", {}), ("ml_cpc", {"alpha": 0.05}), ("ring", {"outer": 0.2}),
                                      ("hard_negative", {"beta": 1.0, "tau_plus": 0.1}),
                                      ("hard_negative", {"beta": 0.5, "tau_plus": 0.1}), ("debiased", {})])
def test_objectives_read_the_same_on_both_paths(monkeypatch, name, kw):
    z = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    runs = []
    for chunked_from in (1 << 40, 0):
        monkeypatch.setattr(lse, "CHUNKED_FROM", chunked_from)
        monkeypatch.setattr(lse, "CHUNK", 300)
        zz = z.clone().requires_grad_(True)
        out = build(name, **kw)(*in_batch_pairs(zz, 0.2, masked=True))
        out.loss.backward()
        runs.append((out.loss.item(), out.mi.item(), zz.grad))
    (l0, m0, g0), (l1, m1, g1) = runs
    assert l1 == pytest.approx(l0, rel=1e-12) and m1 == pytest.approx(m0, rel=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-13)
