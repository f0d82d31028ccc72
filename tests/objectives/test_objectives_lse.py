"""Each row log-sum-exp path (chunked: CPU; softmax: GPU) equals torch.logsumexp, values and gradients, -inf
entries included; the objectives read the same on every path; each device gets its own path."""
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


@pytest.mark.parametrize("scales", [(1.0,), (2.0, 1.0), (1.5, 0.5, 1.0)])
def test_softmax_rows_match_torch(scales):
    x = scores(n=30, m=17).requires_grad_(True)
    x.data[3] = -math.inf  # a row of no candidates: LSE -inf, as torch gives
    w = torch.randn(x.shape[0], len(scales), generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    got = lse.row_lse(x, scales, path="softmax")
    want = torch.stack([torch.logsumexp(x * c, 1) for c in scales], 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    live = torch.ones(30, dtype=torch.bool)
    live[3] = False
    (got[live] * w[live]).sum().backward()
    g_got, x.grad = x.grad, None
    (want[live] * w[live]).sum().backward()
    assert torch.isfinite(g_got).all() and (g_got[x.detach() == -math.inf] == 0).all()  # torch's: NaN in row 3
    torch.testing.assert_close(g_got[live], x.grad[live], rtol=1e-12, atol=1e-12)
    y = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lse.row_lse(t, (1.5, 0.7), path="softmax"), (y,))


def test_each_device_and_size_gets_its_path(monkeypatch):
    big, small = torch.zeros(1024, 1024), torch.zeros(4, 4)
    assert lse.choose_path(big, (1.0,)) == "chunked" and lse.choose_path(small, (1.0,)) == "plain"
    assert lse.choose_path(big, (2.0, -1.0)) == "plain"  # a scale <= 0 turns -inf around: torch's own
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    assert lse.choose_path(small, (1.0,)) == lse.choose_path(big, (2.0, 1.0)) == "softmax"
    monkeypatch.setattr(lse, "SOFTMAX_UP_TO", 1000)  # very large N: the chunks' memory wins on a GPU too
    assert lse.choose_path(big, (1.0,)) == "chunked" and lse.choose_path(small, (1.0,)) == "softmax"
    with pytest.raises(ValueError, match="path must be one of chunked, softmax, plain"):
        lse.row_lse(small, path="fused")


@pytest.mark.parametrize("name, kw", [("infonce", {}), ("ml_cpc", {"alpha": 0.05}), ("ring", {"outer": 0.2}),
                                      ("hard_negative", {"beta": 1.0, "tau_plus": 0.1}),
                                      ("hard_negative", {"beta": 0.5, "tau_plus": 0.1}), ("debiased", {})])
def test_objectives_read_the_same_on_every_path(monkeypatch, name, kw):
    z = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    monkeypatch.setattr(lse, "CHUNK", 300)
    runs = {}
    for path in lse.PATHS:
        monkeypatch.setattr(lse, "choose_path", lambda x, scales, p=path: p)
        zz = z.clone().requires_grad_(True)
        out = build(name, **kw)(*in_batch_pairs(zz, 0.2, masked=True))
        out.loss.backward()
        runs[path] = (out.loss.item(), out.mi.item(), zz.grad)
    l0, m0, g0 = runs["plain"]
    for path in ("chunked", "softmax"):
        l1, m1, g1 = runs[path]
        assert l1 == pytest.approx(l0, rel=1e-12) and m1 == pytest.approx(m0, rel=1e-12), path
        torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-13)
