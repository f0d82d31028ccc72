"""The MI bound of a view against a memory bank that holds one row per image of the training split.

A memory-bank method (instance discrimination, Local Aggregation) scores the
embedding q of a view of image i against bank rows b_j, f(x, j) = <q, b_j> / t.
Its training rows see a few thousand rows drawn from the bank (or a ring of
them), and what those rows read is not a certified figure: the draws leave
out most of the split, and a ring picks its rows by their scores.

What is certified instead is :func:`bank_bound`, the view against every row
of the bank that its image could be::

    mi = log N + mean_i [ f(x_i, i) - log sum_{j=1..N} exp f(x_i, j) ]

a lower bound on I(X; I), the MI between a view X and the index I of the
image it was made from, I uniform over the N images of the split and drawn
independently of the critic. Why it is a bound for any critic: with p(i) =
1/N, q(i | x) = exp f(x, i) / sum_j exp f(x, j) is a distribution over
indices, and I(X; I) >= E[log q(I | X) / p(I)] (Barber and Agakov 2003),
which is the expression above; the normaliser is the exact sum over the
split, not an estimate from samples. The mean over the batch's rows is an
unbiased estimate of that expectation. Its ceiling is log N (H(I) = log N).

**The loader's sampling.** A training loader does not draw I independently
of the bank: it visits every image once per epoch (a random permutation),
and the bank shows which rows this epoch has refreshed, so the critic (the
encoder and the bank, both made from the run's past H) can tell which
indices a batch can still hold. Normalised over all N rows, the bound then
counts that knowledge as information about the image: with every image the
same (I(X; I) = 0) and an encoder that drifts within an epoch, it read
+0.67 nats on average over an epoch and +1.74 at its last step
(tests/pretrain/test_bank_sampling.py). So a method passes ``visited`` (N,)
bool: the images its epoch has visited before this step, in every process.
Given H, the image of a row the epoch has not visited is uniform over the
R = N - |visited| images it has not (the rest of a random permutation), so
with the prior uniform on R::

    mi = mean_i [ i not visited ] * ( log R + f(x_i, i) - log sum_{j not visited} exp f(x_i, j) )

is a lower bound on I(X; I | H), the MI between a view and its image's index
given everything the run did before the step, the index drawn as the loader
draws it. A row whose image the epoch has visited already (the pad
DistributedSampler repeats to even out the ranks: its image is known from H)
counts 0. The same sum is a bound if a loader drew with replacement (I
uniform over all N given H): q~(i | x) = (R / N) q(i | x) on the unvisited
rows and 1/N on the visited is a distribution, and log q~(I | X) / p(I) is
the term above on the first and 0 on the second. The ceiling is log R: log N
at an epoch's first step, down to about log(global batch) at its last.
Without ``visited`` (none visited) it is the first formula.

The bank's rows are frozen while scoring (the batch is scored before the
bank takes its new features), so the critic does not depend on the batch it
scores. tests/objectives/test_objectives_bank.py checks it against critics
of known I(X; I).
"""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import ObjectiveOutput, _no_autocast

#: bank rows scored at a time: a (B, CHUNK) block of scores at most
CHUNK = 1 << 16


@torch.no_grad()
def bank_scores_lse(q: torch.Tensor, bank: torch.Tensor, temperature: float,
                    visited: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) log sum_j exp(<q_i, bank_j> / t) over the bank rows not ``visited``, a chunk of rows at a time."""
    out = None
    for start in range(0, bank.shape[0], CHUNK):
        s = q @ bank[start : start + CHUNK].T / temperature
        if visited is not None:
            s = s.masked_fill(visited[start : start + CHUNK][None], -math.inf)
        s = torch.logsumexp(s, dim=1)
        out = s if out is None else torch.logaddexp(out, s)
    return out


@torch.no_grad()
def bank_bound(q: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, temperature: float,
               visited: torch.Tensor | None = None) -> ObjectiveOutput:
    """InfoNCE of each view against the whole bank: a lower bound on I(view; image index), ceiling log N.

    ``q`` (B, D): the views' embeddings (as the method scores them: normalise them first if it does);
    ``bank`` (N, D): one row per image of the split; ``indices`` (B,): each view's image; ``visited``
    (N,) bool: the images the epoch has visited before this step (the module docstring says why; the
    ceiling is then log of the others). Computed in float32 (float64 stays) with autocast off. The loss
    field is the negated bound (detached).
    """
    if q.dim() != 2 or bank.dim() != 2 or q.shape[1] != bank.shape[1]:
        raise ValueError(f"q (B, D) and bank (N, D) must share D, got {tuple(q.shape)} and {tuple(bank.shape)}")
    if indices.shape != (q.shape[0],):
        raise ValueError(f"indices must be ({q.shape[0]},), one per row of q, got {tuple(indices.shape)}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    visited = _check_visited(visited, bank.shape[0])
    dtype = torch.float64 if torch.float64 in (q.dtype, bank.dtype) else torch.float32
    with _no_autocast(q):
        q, bank = q.detach().to(dtype), bank.detach().to(dtype)
        pos = (q * bank[indices.long()]).sum(dim=1) / temperature
        return _bound(pos, bank_scores_lse(q, bank, float(temperature), visited), indices, visited, bank.shape[0])


@torch.no_grad()
def bank_bound_of_scores(scores: torch.Tensor, indices: torch.Tensor,
                         visited: torch.Tensor | None = None) -> ObjectiveOutput:
    """:func:`bank_bound` from the (B, N) scores of the views against every bank row, already divided by the
    temperature, for a method that computes them anyway (instance recognition, Local Aggregation)."""
    if scores.dim() != 2 or indices.shape != (scores.shape[0],):
        raise ValueError(f"scores (B, N) and indices (B,) must agree, got {tuple(scores.shape)} and "
                         f"{tuple(indices.shape)}")
    visited = _check_visited(visited, scores.shape[1])
    scores = scores.detach()
    pos = scores.gather(1, indices.long()[:, None])[:, 0]
    if visited is not None:
        scores = scores.masked_fill(visited[None], -math.inf)
    return _bound(pos, torch.logsumexp(scores, dim=1), indices, visited, scores.shape[1])


def _check_visited(visited: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if visited is not None and (visited.dtype != torch.bool or visited.shape != (n,)):
        raise ValueError(f"visited must be ({n},) bool, one per bank row, got {tuple(visited.shape)} {visited.dtype}")
    return visited


def _bound(pos: torch.Tensor, lse: torch.Tensor, indices: torch.Tensor, visited: torch.Tensor | None,
           n: int) -> ObjectiveOutput:
    """mean_i [i not visited] (log R + pos_i - lse_i), R the rows not visited (all N without ``visited``): the
    bound from each view's own score and its log-sum-exp over those rows; a row of a visited image counts 0."""
    terms = pos - lse
    if visited is not None:
        n -= int(visited.sum())
    log_r = math.log(n) if n > 0 else 0.0
    if visited is not None:
        terms = torch.where(visited[indices.long()], -log_r, terms)
    mi = terms.mean() + log_r
    return ObjectiveOutput(loss=-mi, mi=mi, ceiling=log_r, log_m=log_r)
