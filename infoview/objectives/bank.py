"""The MI bound of a view against a memory bank that holds one row per image of the training split.

A memory-bank method (instance discrimination, Local Aggregation) scores the
embedding q of a view of image i against bank rows b_j, f(x, j) = <q, b_j> / t.
Its training rows see a few thousand rows drawn from the bank (or a ring of
them), and what those rows read is not a certified figure: the draws leave
out most of the split, and a ring picks its rows by their scores.

What is certified instead is :func:`bank_bound`, the view against *every* row
of the bank::

    mi = log N + mean_i [ f(x_i, i) - log sum_{j=1..N} exp f(x_i, j) ]

a lower bound on I(X; I), the MI between a view X and the index I of the
image it was made from, I uniform over the N images of the split. Why it is
a bound for any critic: with p(i) = 1/N, q(i | x) = exp f(x, i) / sum_j exp
f(x, j) is a distribution over indices, and I(X; I) >= E[log q(I | X) / p(I)]
(Barber and Agakov 2003), which is the expression above; the normaliser is
the exact sum over the split, not an estimate from samples. The mean over
the batch's rows is an unbiased estimate of that expectation. Its ceiling
is log N (H(I) = log N). The bank's rows are frozen while scoring (the batch
is scored before the bank takes its new features), so the critic does not
depend on the batch it scores. tests/objectives/test_objectives_bank.py checks
it against critics of known I(X; I).
"""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import ObjectiveOutput, _no_autocast

#: bank rows scored at a time: a (B, CHUNK) block of scores at most
CHUNK = 1 << 16


@torch.no_grad()
def bank_scores_lse(q: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,) log sum_j exp(<q_i, bank_j> / t) over all bank rows, a chunk of rows at a time."""
    out = None
    for start in range(0, bank.shape[0], CHUNK):
        s = torch.logsumexp(q @ bank[start : start + CHUNK].T / temperature, dim=1)
        out = s if out is None else torch.logaddexp(out, s)
    return out


@torch.no_grad()
def bank_bound(q: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, temperature: float) -> ObjectiveOutput:
    """InfoNCE of each view against the whole bank: a lower bound on I(view; image index), ceiling log N.

    ``q`` (B, D): the views' embeddings (as the method scores them: normalise them first if it does);
    ``bank`` (N, D): one row per image of the split; ``indices`` (B,): each view's image. Computed in
    float32 (float64 stays) with autocast off. The loss field is the negated bound (detached).
    """
    if q.dim() != 2 or bank.dim() != 2 or q.shape[1] != bank.shape[1]:
        raise ValueError(f"q (B, D) and bank (N, D) must share D, got {tuple(q.shape)} and {tuple(bank.shape)}")
    if indices.shape != (q.shape[0],):
        raise ValueError(f"indices must be ({q.shape[0]},), one per row of q, got {tuple(indices.shape)}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = torch.float64 if torch.float64 in (q.dtype, bank.dtype) else torch.float32
    with _no_autocast(q):
        q, bank = q.detach().to(dtype), bank.detach().to(dtype)
        pos = (q * bank[indices.long()]).sum(dim=1) / temperature
        return _bound(pos, bank_scores_lse(q, bank, float(temperature)), bank.shape[0])


@torch.no_grad()
def bank_bound_of_scores(scores: torch.Tensor, indices: torch.Tensor) -> ObjectiveOutput:
    """:func:`bank_bound` from the (B, N) scores of the views against every bank row, already divided by the
    temperature, for a method that computes them anyway (instance recognition, Local Aggregation)."""
    if scores.dim() != 2 or indices.shape != (scores.shape[0],):
        raise ValueError(f"scores (B, N) and indices (B,) must agree, got {tuple(scores.shape)} and "
                         f"{tuple(indices.shape)}")
    scores = scores.detach()
    return _bound(scores.gather(1, indices.long()[:, None])[:, 0], torch.logsumexp(scores, dim=1), scores.shape[1])


def _bound(pos: torch.Tensor, lse: torch.Tensor, n: int) -> ObjectiveOutput:
    """log N + mean_i [pos_i - lse_i]: the bound from each view's own score and its log-sum-exp over the bank."""
    mi = (pos - lse).mean() + math.log(n)
    return ObjectiveOutput(loss=-mi, mi=mi, ceiling=math.log(n), log_m=math.log(n))
