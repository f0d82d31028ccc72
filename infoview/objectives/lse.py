"""Row log-sum-exp of large score matrices: the path that is fastest on each device.

``row_lse(x, scales)`` returns, for each scale c, LSE_j(c x_ij) over each row
(an (N,) tensor per scale). Entries of -inf are no candidates and add nothing,
whatever the sign of c. Three paths give the same values and gradients
(tests/objectives/test_objectives_lse.py checks each against
``torch.logsumexp``); ``row_lse`` picks one by device and size, ``path=`` forces one:

- ``chunked`` (a CPU, large matrices): ``torch.logsumexp`` on an (N, M)
  matrix allocates a full-size ``exp(x - max)`` in the forward pass and its
  backward three more ((x - lse), its exp, the product with the gradient),
  each a fresh N M block that the CPU must page in; HCL needs two scales,
  which doubles all of it. Here the forward works on row chunks of about a
  million entries (a few MiB, warm in cache) and the backward writes the
  gradient, summed over the scales, into one output block, a chunk at a time.
- ``softmax`` (a GPU, up to ``SOFTMAX_UP_TO`` entries): one fused
  ``log_softmax`` kernel per scale, the row maxima from one ``max``; the LSE is read off at each row's largest entry
  (lse = c x_max - log_softmax(c x)_max, exact there), and the backward is
  c exp(log_softmax) times the gradient, two kernels. The chunk loop above
  launches dozens of small kernels and ``torch.logsumexp`` six, each a pass
  over the matrix; this is the pass lightly's NT-Xent (a cross-entropy)
  makes. It keeps one (N, M) block per scale for the backward; larger
  matrices (N = M above 32,768) take the chunked path on a GPU too.
- ``plain``: ``torch.logsumexp`` itself, for small matrices, scales <= 0,
  and batched inputs under ``torch.func.vmap`` (the exact-critic tests).

benchmarks/objectives.py measures the paths (docs/results.md, "The objectives'
own cost"; docs/gpu/ for the GPU).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

#: matrices with fewer entries than this take torch.logsumexp
CHUNKED_FROM = 1 << 20
#: entries per row chunk
CHUNK = 1 << 20
#: on a GPU, matrices up to this many entries take the softmax path (4 GiB of float32 kept per scale)
SOFTMAX_UP_TO = 1 << 30


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


class _SoftmaxLSE(torch.autograd.Function):
    """LSE per scale from fused ``log_softmax`` kernels; the backward from the saved log-softmax."""

    @staticmethod
    def forward(ctx, x, scales):
        top, at = x.max(dim=1, keepdim=True)  # one pass: each row's largest entry and where it is
        empty = top == -math.inf  # rows of no candidate: log_softmax gives NaN there, their gradient is 0
        outs, saved = [], []
        for c in scales:
            logp = torch.log_softmax(x if c == 1.0 else x * c, dim=1).masked_fill_(empty, -math.inf)
            lse = c * top - logp.gather(1, at)  # exact at the row's largest entry, where logp is near 0
            # a row with no finite entry: -inf (none) or inf, as torch.logsumexp; a NaN stays NaN
            outs.append(torch.where(torch.isfinite(top), lse, c * top)[:, 0])
            saved.append(logp)
        ctx.save_for_backward(*saved)
        ctx.scales = tuple(scales)
        return torch.stack(outs, dim=1)

    @staticmethod
    def backward(ctx, grad):
        grad_x = None
        for s, (c, logp) in enumerate(zip(ctx.scales, ctx.saved_tensors)):
            g = grad[:, s : s + 1] * c
            if grad_x is None:
                grad_x = torch.exp(logp).mul_(g)  # d LSE(c x) / dx = c softmax(c x)
            else:
                grad_x.addcmul_(torch.exp(logp), g)
        return grad_x, None


PATHS = ("chunked", "softmax", "plain")


def choose_path(x: torch.Tensor, scales: Sequence[float]) -> str:
    """The path :func:`row_lse` takes for ``x`` when none is asked for (see the module docstring)."""
    if x.dim() != 2 or _batched(x) or min(scales) <= 0.0:
        return "plain"
    if x.device.type == "cuda":  # the softmax path keeps an N M block per scale: past 4 GiB each, chunks
        return "softmax" if x.numel() <= SOFTMAX_UP_TO else "chunked"
    return "chunked" if x.numel() >= CHUNKED_FROM else "plain"


def row_lse(x: torch.Tensor, scales: Sequence[float] = (1.0,), path: str | None = None) -> torch.Tensor:
    """(N, S): LSE_j(c_s x_ij) for each row i and scale c_s; -inf entries add nothing.

    ``path``: ``chunked``, ``softmax`` or ``plain`` (see the module
    docstring); None picks the fastest for the device and size.
    """
    scales = tuple(float(c) for c in scales)
    path = path or choose_path(x, scales)
    if path not in PATHS:
        raise ValueError(f"row_lse: path must be one of {', '.join(PATHS)}, got {path!r}")
    if path == "plain" or x.dim() != 2 or _batched(x):
        return _plain(x, scales)
    if path == "softmax" and min(scales) > 0.0:
        return _SoftmaxLSE.apply(x, scales)
    return _ChunkedLSE.apply(x, scales)
