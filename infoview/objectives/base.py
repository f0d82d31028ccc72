"""The contract every objective keeps (the registry that names them: :mod:`infoview.objectives.registry`).

An objective is an ``nn.Module`` called as ``obj(pos, neg)``:

- ``pos``: (N,) critic scores of positive pairs;
- ``neg``: (N, K) critic scores of negatives for the same rows.

Scores are critic outputs already divided by any temperature. A third
argument ``k`` says that ``neg`` is wider than its K negatives: entries equal
to -inf are not negatives (they count neither in K nor in any sum) and every
row holds exactly ``k`` others, which is checked.
``in_batch_pairs(..., masked=True)`` builds such rows, so that the negatives
need not be copied out of the score matrix. The call returns an
:class:`ObjectiveOutput`:

- ``.loss``: scalar, to minimise;
- ``.mi``: a lower bound on the MI in nats, detached. It is a valid bound for
  every parameter value the objective accepts (tests/objectives/
  test_objectives_exact_critic.py checks each against critics of known MI);
- ``.ceiling``: the most ``.mi`` can ever read for these shapes and parameters
  (log m for InfoNCE, log(m / alpha) for ML-CPC, inf for NWJ);
- ``.estimate``: what the training objective itself reads in nats where that
  is *not* a certified bound (ML-CPC below its alpha floor, Ring's restricted
  value), else None;
- ``.log_m``: log of the m = K + 1 candidates a row sees.

Everything is computed in float32 (float64 stays float64), with autocast off.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from infoview.objectives.registry import (  # noqa: F401 - the registry's names, where they have always been
    _OBJECTIVES,
    available,
    build,
    objective_class,
    objective_params,
    register,
)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, differentiable
    mi: torch.Tensor  # scalar, detached: a certified MI lower bound in nats
    ceiling: float  # the most .mi can read for these shapes and parameters (may be inf)
    log_m: float  # log(K + 1)
    estimate: torch.Tensor | None = None  # detached: the training value where it is not a bound


@dataclass
class Terms:
    """What :meth:`Objective.compute` returns; the base class detaches and wraps it."""

    loss: torch.Tensor
    mi: torch.Tensor
    ceiling: float
    estimate: torch.Tensor | None = None


class Objective(nn.Module):
    """Base class: checks the inputs and computes in float32 (or float64), autocast off.

    Subclasses implement :meth:`compute`, as ``compute(pos, neg)``, or as
    ``compute(pos, neg, k)`` when it reads rows with -inf entries correctly
    (``k`` is then their number of negatives); to the first kind the base
    class hands the negatives copied out to (N, k). An objective whose loss pools every
    row into one normaliser (ML-CPC) sets ``pooled = True`` and implements
    :meth:`row_terms` and :meth:`pool` instead: ``row_terms`` reduces each row
    to a few per-row numbers, ``pool`` turns the rows of the whole batch into
    the terms. Under DDP the methods gather only those per-row numbers (with
    gradients) from every rank, so each rank computes the global value.
    """

    name: str = ""
    pooled: bool = False
    #: one line: what ``.mi`` certifies and its ceiling (``infoview list objectives`` prints it)
    certifies: str = ""

    #: set from compute's signature: whether it takes k (rows with -inf entries) itself
    _compute_takes_k: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "compute" in cls.__dict__:
            cls._compute_takes_k = "k" in inspect.signature(cls.compute).parameters

    @classmethod
    def known_mi_grid(cls, m: int) -> list[dict]:
        """The parameters at which ``.mi`` is checked against critics of known MI on score matrices of ``m``
        candidates per row (tests/objectives/test_objectives_exact_critic.py runs every registered objective at
        its grid, so registering one tests it). By default its defaults; a family whose bound is claimed over a
        range of a parameter lists that range, ends included."""
        return [{}]

    def forward(self, pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> ObjectiveOutput:
        pos, neg, k = check_scores(pos, neg, k)
        with _no_autocast(pos):
            if self.pooled:
                terms = self.pool(self.row_terms(pos, neg), k)
            elif self._compute_takes_k:
                terms = self.compute(pos, neg, k)
            else:
                terms = self.compute(pos, neg if k == neg.shape[1] else compact(neg, k))
        return _wrap(terms, k)

    def from_rows(self, rows: tuple[torch.Tensor, ...], k: int) -> ObjectiveOutput:
        """A pooled objective's output from per-row terms gathered from every rank."""
        with _no_autocast(rows[0]):
            return _wrap(self.pool(rows, int(k)), int(k))

    def rows(self, pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, ...]:
        """A pooled objective's per-row terms of these rows, to gather across ranks."""
        pos, neg, _ = check_scores(pos, neg, k)
        with _no_autocast(pos):
            return self.row_terms(pos, neg)

    @torch.no_grad()
    def bound(self, pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> ObjectiveOutput:
        """The certified figures (``.mi``, ``.ceiling``) on these scores, without gradients.

        The methods call it on the batch's cross-view matrix. It is the call
        itself, except that ML-CPC moves an alpha above m (valid for the
        training rows, which may have more candidates) down to m.
        """
        return self(pos, neg, k)

    def compute(self, pos: torch.Tensor, neg: torch.Tensor) -> Terms:
        raise NotImplementedError

    def row_terms(self, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} is not pooled")

    def pool(self, rows: tuple[torch.Tensor, ...], k: int) -> Terms:
        raise NotImplementedError(f"{type(self).__name__} is not pooled")

    def set_epoch(self, epoch: float) -> None:
        """Objectives with a schedule (Ring's annealed threshold) override this."""


def _wrap(terms: Terms, k: int) -> ObjectiveOutput:
    if not isinstance(terms, Terms):
        raise TypeError(
            f"an objective's compute() must return objectives.Terms(loss, mi, ceiling[, estimate]), got "
            f"{type(terms).__name__}; an objective whose loss certifies nothing reports Terms(loss, 0, 0.0)"
        )
    est = terms.estimate.detach() if terms.estimate is not None else None
    return ObjectiveOutput(loss=terms.loss, mi=terms.mi.detach(), ceiling=float(terms.ceiling),
                           log_m=math.log(k + 1), estimate=est)


def _no_autocast(t: torch.Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def check_scores(pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate shapes and the number of negatives; upcast half precision to float32 (float64 stays).

    Returns ``(pos, neg, k)``, k = neg.shape[1] unless given. A given ``k`` below
    that is checked against the rows: each must hold exactly k entries that are
    not -inf, since a k larger than a row's true count would raise its log m.
    """
    if pos.dim() != 1:
        raise ValueError(f"pos must be (N,) scores of positive pairs, got shape {tuple(pos.shape)}")
    if neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"neg must be (N, K) scores with N = {pos.shape[0]} rows like pos, got shape {tuple(neg.shape)}"
        )
    if neg.shape[1] < 1:
        raise ValueError("neg must hold at least one negative per row (K >= 1)")
    dtype = torch.float64 if torch.float64 in (pos.dtype, neg.dtype) else torch.float32
    width = neg.shape[1]
    if k is None:
        k = width
    else:
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= width:
            raise ValueError(f"k (negatives per row) must be an integer in 1..{width} (neg's width), got {k!r}")
        k = int(k)
        if k < width:
            counts = _count_negatives(neg)
            if not bool((counts == k).all()):
                raise ValueError(
                    f"neg: with k = {k} every row must hold exactly {k} scores other than -inf, but rows hold "
                    f"{int(counts.min())} to {int(counts.max())}"
                )
    return pos.to(dtype), neg.to(dtype), k


def _count_negatives(neg: torch.Tensor) -> torch.Tensor:
    """Entries other than -inf in each row, a row chunk at a time: a sum over a whole (N, M) mask
    would first widen it to int64, 8 bytes an entry (twice the float32 scores themselves)."""
    rows = max(1, (1 << 20) // max(1, neg.shape[1]))
    return torch.cat([(neg[i : i + rows] != -math.inf).sum(dim=1) for i in range(0, neg.shape[0], rows)])


def compact(neg: torch.Tensor, k: int) -> torch.Tensor:
    """The (N, k) negatives of rows whose other entries are -inf, in their order."""
    return neg[neg != -math.inf].view(neg.shape[0], k)
