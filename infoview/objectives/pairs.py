"""Build (pos, neg) critic scores from embeddings.

- :func:`in_batch_pairs`: SimCLR-style, every other view of the same image is a
  positive and every view of every other image a negative (NT-Xent for 2 views);
  with ``all_views`` the candidates come from a batch gathered across ranks;
  with ``masked=True`` the negatives stay in the score matrix as it was
  computed, their own image's columns set to -inf, instead of being copied out
  (what the methods train on: less time and memory, same values).
- :func:`matrix_pairs`: an (n, n) critic matrix with positives on the diagonal.
- :func:`cross_view_pairs`: that matrix for two views of n images, the layout
  the methods certify their MI bound on.
- :func:`queue_logits`: MoCo-style, one positive key per query and a queue of
  negatives.
- :func:`bank_logits`: memory-bank style (instance discrimination), each row
  with its own K negatives drawn from the bank.

Scores are always computed in float32 (float64 stays float64) with autocast
off: embeddings are upcast *before* the matmul. Under bf16 autocast a matmul
would round the logits to 8 bits of mantissa, so that many scores tie (Ring's
cut would fall on ties) and the bound would move with the rounding.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from infoview.objectives.base import _no_autocast

Views = Union[torch.Tensor, Sequence[torch.Tensor]]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _upcast(normalize: bool, *ts: torch.Tensor) -> list[torch.Tensor]:
    """float32 (float64 stays), L2-normalised along the last axis when asked; call with autocast off."""
    ts = [_f32(t) for t in ts]
    return [F.normalize(t, dim=-1) for t in ts] if normalize else ts


def _check_query_key(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, D), got {tuple(q.shape)} and {tuple(k.shape)}")


def _stack_views(views: Views, name: str) -> torch.Tensor:
    if isinstance(views, torch.Tensor):
        z = views
    else:
        views = list(views)
        if not views or not all(isinstance(v, torch.Tensor) for v in views):
            raise ValueError(f"{name} must be a (V, B, D) tensor or a list of V (B, D) tensors")
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all views must have the same (B, D) shape, got {sorted(shapes)}")
        z = torch.stack(views)
    if z.dim() != 3:
        raise ValueError(f"{name} must be (V, B, D) (views, images, embedding dim), got shape {tuple(z.shape)}")
    return z


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature


def in_batch_pairs(
    views: Views,
    temperature: float = 0.1,
    normalize: bool = True,
    all_views: torch.Tensor | None = None,
    offset: int = 0,
    masked: bool = False,
):
    """In-batch positives and negatives for V >= 2 views of B images.

    Scores are cosine similarities / temperature (dot products if
    ``normalize=False``). Every (anchor view v, other view w != v, image i) is a
    row: its positive is the score of view v of image i against view w of image
    i, its negatives are the scores against all V views of every other image.
    Rows are ordered (v, w, i) with w running over the views other than v, and
    each row's negatives (w', j) with j != i. So N = V (V - 1) B and
    K = V (B_total - 1); for V = 2 this is SimCLR's NT-Xent (2B rows of 2B - 2
    negatives).

    For data parallel training pass ``all_views``, the (V, B_total, D) views of
    the whole global batch gathered from all ranks (with gradients), in which
    this rank's images are columns ``offset .. offset + B``. Anchors are then the
    local ``views`` and candidates come from ``all_views``.

    Returns ``(pos (N,), neg (N, K))`` in float32 (float64 for float64 embeddings).

    ``masked=True`` returns ``(pos, neg, K)`` instead, where ``neg`` is
    (N, V B_total): row (v, w, i) holds the scores of view v of image i against
    every candidate (w', j), and the V columns of image i itself are -inf,
    which the objectives read as "not a negative" when called as
    ``objective(pos, neg, K)``. The scores are the same; only the copy of the
    (N, K) negatives is saved. For V = 2 the rows are the score matrix itself,
    written in place, so a step holds one (2B, 2B_total) matrix and its
    gradient (lightly's NT-Xent holds several; benchmarks/objectives.py
    measures both).
    """
    z = _stack_views(views, "views")
    temperature = _check_temperature(temperature)
    v, b, d = z.shape
    if v < 2:
        raise ValueError(f"views: need at least 2 views per image for positives, got V = {v}")
    if all_views is None:
        if offset != 0:
            raise ValueError("offset is only meaningful together with all_views")
        cands = z
    else:
        cands = _stack_views(all_views, "all_views")
        if cands.shape[0] != v or cands.shape[2] != d:
            raise ValueError(
                f"all_views must be (V, B_total, D) = ({v}, B_total, {d}) like views, got {tuple(cands.shape)}"
            )
        if not 0 <= offset <= cands.shape[1] - b:
            raise ValueError(
                f"offset must place the {b} local images inside all_views' {cands.shape[1]} columns, got {offset}"
            )
    bt = cands.shape[1]
    if bt < 2:
        raise ValueError(f"need at least 2 images in the batch for negatives, got {bt}")
    with _no_autocast(z):
        same = all_views is None
        (z,) = _upcast(normalize, z)
        cands = z if same else _upcast(normalize, cands)[0]
        if masked:
            pos, neg = _in_batch_masked(z, cands, offset, temperature)
            return pos, neg, v * (bt - 1)
        return _in_batch_scores(z, cands, offset, temperature)


def _in_batch_positives(z, cands, offset, temperature):
    """pos (V (V - 1) B,): view v of image i against its other views w != v, rows (v, w, i)."""
    v, b, _ = z.shape
    own = cands[:, offset : offset + b]  # (V, B, D)
    # an elementwise product and a sum: einsum would make this a batched matmul of B tiny (V, D) x (D, V)
    # products, 30x slower on a CPU whose idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE, which the CLI sets)
    pos_all = (z.unsqueeze(1) * own.unsqueeze(0)).sum(-1) / temperature  # (V, V, B)
    off_diag = ~torch.eye(v, dtype=torch.bool, device=z.device)
    return pos_all[off_diag].reshape(-1)


class _MaskedScores(torch.autograd.Function):
    """a @ b.T with the entries (rows, cols) set to -inf, and the gradient of the unmasked entries only.

    Written by hand for memory: the same with autograd (a matmul, then an
    in-place index_put of -inf) would make its backward clone the full (N, M)
    gradient twice. Here the backward is the matmul's, minus the few masked
    entries' share, added back per entry (index_add over V V B rows).
    """

    @staticmethod
    def forward(ctx, a, b, rows, cols):
        scores = a @ b.t()
        scores[rows, cols] = -math.inf
        ctx.save_for_backward(a, b, rows, cols)
        return scores

    @staticmethod
    def backward(ctx, grad):
        a, b, rows, cols = ctx.saved_tensors
        g_masked = grad[rows, cols].unsqueeze(1)  # usually 0 (exp(-inf)); removed whatever it is
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (grad @ b).index_add_(0, rows, g_masked * b[cols], alpha=-1)
        if ctx.needs_input_grad[1]:
            grad_b = (grad.t() @ a).index_add_(0, cols, g_masked * a[rows], alpha=-1)
        return grad_a, grad_b, None, None


def _in_batch_masked(z, cands, offset, temperature):
    """(pos, neg) of the upcast views ``z`` against ``cands``, neg the score rows with own columns -inf."""
    v, b, d = z.shape
    bt = cands.shape[1]
    pos = _in_batch_positives(z, cands, offset, temperature)
    # rows (v, i), columns (w, j); image i's own columns, in every view, are no negatives
    vv, ww, ii = torch.meshgrid(*(torch.arange(n, device=z.device) for n in (v, v, b)), indexing="ij")
    rows, cols = (vv * b + ii).reshape(-1), (ww * bt + ii + offset).reshape(-1)
    # the temperature goes on the (V B, D) anchors rather than on the (V B, V Bt) result
    scores = _MaskedScores.apply(z.reshape(v * b, d) / temperature, cands.reshape(v * bt, d), rows, cols)
    if v == 2:
        return pos, scores  # rows (0, 1, i) then (1, 0, i): the score matrix's own rows
    neg = scores.view(v, 1, b, v * bt).expand(v, v - 1, b, v * bt)
    return pos, neg.reshape(-1, v * bt)


def _in_batch_scores(z, cands, offset, temperature):
    """(pos, neg) of the upcast views ``z`` against ``cands``, the negatives copied out to (N, K)."""
    v, b, _ = z.shape
    bt = cands.shape[1]

    # scores[v, i, w, j] = <z[v, i], cands[w, j]> / t
    scores = torch.einsum("vid,wjd->viwj", z, cands) / temperature

    pos = _in_batch_positives(z, cands, offset, temperature)

    # negatives: drop column offset + i of each row, in all V candidate views
    cols = torch.arange(bt - 1, device=z.device).unsqueeze(0)  # (1, Bt - 1)
    own_col = (torch.arange(b, device=z.device) + offset).unsqueeze(1)  # (B, 1)
    keep = cols + (cols >= own_col).long()  # (B, Bt - 1): j != offset + i
    index = keep.view(1, b, 1, bt - 1).expand(v, b, v, bt - 1)
    neg = scores.gather(3, index).reshape(v, 1, b, v * (bt - 1))
    # a row's negatives do not depend on which view w is its positive
    neg = neg.expand(v, v - 1, b, v * (bt - 1)).reshape(-1, v * (bt - 1))
    return pos, neg


def matrix_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an (n, n) critic matrix: diagonal -> pos (n,), off-diagonal row by row -> neg (n, n - 1)."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (n, n) matrix, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    if n < 2:
        raise ValueError("scores must be at least 2 x 2 to hold a negative per row")
    mask = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores.diagonal(), scores[mask].reshape(n, n - 1)


def cross_view_pairs(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of n anchors ``a`` (n, D) against n candidates ``b`` (n, D), split by :func:`matrix_pairs`.

    Row i is anchor a_i against every b_j: its positive is b_i (the other view
    of the same image), its n - 1 negatives the other images' b_j, each
    independent of image i and scored by the same critic. This is the layout
    in which every objective's ``.mi`` is tested against critics of known MI
    (n rows, m = n candidates), so the methods report the bound on it.
    In-batch SimCLR rows (:func:`in_batch_pairs`) repeat each pair and score
    both views of a negative image, and a MoCo queue holds keys of older
    encoders; neither is such a layout.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (n, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    temperature = _check_temperature(temperature)
    with _no_autocast(a):
        a, b = _upcast(normalize, a, b)
        scores = a @ b.t() / temperature
    return matrix_pairs(scores)


def queue_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo scores: pos_i = <q_i, k_i> / t (B,), neg = q queue^T / t (B, Q).

    ``q`` are the queries (B, D), ``k`` their positive keys (B, D) (from the
    momentum encoder, detached by the caller), ``queue`` the (Q, D) negative keys.
    With ``normalize`` all three are L2-normalised first (cosine similarity).
    Returns float32 scores (float64 for float64 inputs).
    """
    _check_query_key(q, k)
    if queue.dim() != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise ValueError(f"queue must be (Q, D) with D = {q.shape[1]} and Q >= 1, got {tuple(queue.shape)}")
    temperature = _check_temperature(temperature)
    with _no_autocast(q):
        q, k, queue = _upcast(normalize, q, k, queue)
        pos = (q * k).sum(dim=-1) / temperature
        neg = q @ queue.t() / temperature
    return pos, neg


def bank_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-bank scores: pos_i = <q_i, k_i> / t (B,), neg_ij = <q_i, negatives_ij> / t (B, K).

    ``q`` (B, D) are the anchors, ``k`` (B, D) their positives (a bank entry or
    a key), ``negatives`` (B, K, D) each row's own negatives, e.g.
    ``MemoryBank.negatives(indices, K)``. Returns float32 scores (float64 for
    float64 inputs).
    """
    _check_query_key(q, k)
    if negatives.dim() != 3 or negatives.shape[0] != q.shape[0] or negatives.shape[2] != q.shape[1] \
            or negatives.shape[1] < 1:
        raise ValueError(
            f"negatives must be (B, K, D) = ({q.shape[0]}, K, {q.shape[1]}) with K >= 1, got {tuple(negatives.shape)}"
        )
    temperature = _check_temperature(temperature)
    with _no_autocast(q):
        q, k, negatives = _upcast(normalize, q, k, negatives)
        pos = (q * k).sum(dim=-1) / temperature
        neg = torch.einsum("bd,bkd->bk", q, negatives) / temperature
    return pos, neg
