"""Row log-sum-exp of large score matrices, in row chunks, with a lean backward.

``row_lse(x, scales)`` returns, for each scale c, LSE_j(c x_ij) over each row
(an (N,) tensor per scale). Entries of -inf are no candidates and add nothing,
whatever the sign of c.

Why not ``torch.logsumexp``: on an (N, M) matrix it allocates a full-size
``exp(x - max)`` in the forward pass and its backward allocates three more
((x - lse), its exp, the product with the gradient), each a fresh N M block
that the CPU must page in. HCL needs two scales, which doubles all of it. Here
the forward works on row chunks of about a million entries (a few MiB, warm
in cache) and the backward writes the gradient, summed over the scales, into
one output block, also a chunk at a time. benchmarks/objectives.py measures
the whole pass (docs/results.md, "The objectives' own cost"). Small inputs
(and batched ones under ``torch.func.vmap``, which the exact-critic tests
use) take ``torch.logsumexp`` itself: same values.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

#: matrices with fewer entries than this take torch.logsumexp
CHUNKED_FROM = 1 << 20
#: entries per row chunk
CHUNK = 1 << 20


def _scaled(x: torch.Tensor, c: float) -> torch.Tensor:
    if c == 1.0:
        return x
    if c > 0.0:
        return x * c  # c (-inf) = -inf
    # c <= 0 would turn -inf into +inf (or NaN at 0): those entries stay -inf
    return torch.where(x == -math.inf, x, x * c)


def _plain(x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    return torch.stack([torch.logsumexp(_scaled(x, c), dim=1) for c in scales], dim=1)


def _batched(x: torch.Tensor) -> bool:
    try:
        from torch._C._functorch import is_batchedtensor

        return bool(is_batchedtensor(x))
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        return False


def _scaled_into(x: torch.Tensor, c: float, out: torch.Tensor) -> torch.Tensor:
    """``_scaled(x, c)`` written into ``out``."""
    if c == 1.0:
        return out.copy_(x)
    torch.mul(x, c, out=out)
    if c <= 0.0:
        out.masked_fill_(x == -math.inf, -math.inf)
    return out


class _ChunkedLSE(torch.autograd.Function):
    """One chunk-sized work buffer serves every chunk and scale: fresh blocks would each be paged in."""

    @staticmethod
    def forward(ctx, x, scales):
        rows = max(1, CHUNK // max(1, x.shape[1]))
        out = x.new_empty(x.shape[0], len(scales))
        buf = x.new_empty(min(rows, x.shape[0]), x.shape[1])
        with torch.no_grad():
            for i in range(0, x.shape[0], rows):
                chunk = x[i : i + rows]
                b = buf[: chunk.shape[0]]
                for s, c in enumerate(scales):
                    # LSE = m + log sum exp(y - m), m the row's max (0 where it is not finite: a row of -inf
                    # gives log 0 = -inf, a NaN stays NaN), as torch.logsumexp computes it
                    _scaled_into(chunk, c, b)
                    m = b.amax(dim=1, keepdim=True)
                    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                    b.sub_(m).exp_()
                    out[i : i + rows, s] = m[:, 0] + b.sum(dim=1).log()
        ctx.save_for_backward(x, out)
        ctx.scales = tuple(scales)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        grad_x = torch.empty_like(x)
        rows = ctx.rows
        buf = x.new_empty(min(rows, x.shape[0]), x.shape[1]) if len(ctx.scales) > 1 else None
        live = grad.ne(0).any(dim=0).tolist()  # per scale: does any row's output carry a gradient?
        for i in range(0, x.shape[0], rows):
            chunk = x[i : i + rows]
            acc = grad_x[i : i + rows]
            first = True
            for s, c in enumerate(ctx.scales):
                if not live[s]:
                    continue  # an output used without gradient (HCL's plain LSE for its detached bound)
                # d LSE(c x) / dx = c softmax(c x); softmax = exp(c x - LSE); exp(-inf) = 0.
                # The first scale is written straight into the output block, the others added to it.
                w = _scaled_into(chunk, c, acc if first else buf[: chunk.shape[0]])
                w.sub_(out[i : i + rows, s : s + 1]).exp_().mul_((c * grad[i : i + rows, s]).unsqueeze(1))
                if not first:
                    acc.add_(w)
                first = False
            if first:
                acc.zero_()
        return grad_x, None


def row_lse(x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """(N, S): LSE_j(c_s x_ij) for each row i and scale c_s; -inf entries add nothing."""
    scales = tuple(float(c) for c in scales)
    if x.dim() != 2 or x.numel() < CHUNKED_FROM or _batched(x):
        return _plain(x, scales)
    return _ChunkedLSE.apply(x, scales)
