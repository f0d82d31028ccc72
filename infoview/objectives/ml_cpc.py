"""Multi-label contrastive predictive coding (Song & Ermon, NeurIPS 2020)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, Terms, _no_autocast, _wrap, register
from infoview.objectives.lse import row_lse


def _positive(name: str, value) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"ml_cpc: {name} must be a positive number, got {value}")
    return value


def alpha_floor(n: int, m: int) -> float:
    """The smallest alpha at which alpha-ML-CPC is a lower bound on MI: m / (n (m - 1) + 1).

    ``n`` rows (independent positive pairs) with ``m`` candidates each. At the
    floor every negative weighs n times a positive in the pooled normaliser,
    which then matches, in expectation, an ML-CPC (alpha = 1) normaliser over
    n (m - 1) + 1 candidates per row; the bound's ceiling there is
    log(n (m - 1) + 1). docs/objectives.md gives the derivation and the checks.
    """
    n, m = int(n), int(m)
    if n < 1 or m < 2:
        raise ValueError(f"ml_cpc: need n >= 1 rows and m >= 2 candidates, got n={n}, m={m}")
    return m / (n * (m - 1) + 1)


def ml_cpc_value(pos: torch.Tensor, lse_neg: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """J_alpha from the positives (N,) and each row's log-sum-exp of its K negatives (N,).

    J = mean(pos) - log[ alpha / (N m) sum_i e^pos_i + (m - alpha) / (N m (m - 1)) sum_ij e^neg_ij ]
    """
    n, m = pos.shape[0], k + 1
    log_a = math.log(alpha)
    w_neg = (m - alpha) / (m - 1)
    # alpha == m gives the negatives weight 0: log 0 = -inf drops them
    log_b = math.log(w_neg) if w_neg > 0 else -math.inf
    per_row = torch.logaddexp(pos + log_a, lse_neg + log_b)
    return pos.mean() - torch.logsumexp(per_row, dim=0) + math.log(n * m)


@register("ml_cpc")
class MLCPC(Objective):
    r"""alpha-ML-CPC (Song, Ermon, "Multi-label Contrastive Predictive Coding",
    NeurIPS 2020).

    Instead of one softmax per row, all N positives and N K negatives of the
    batch share one normaliser. With m = K + 1 candidates per row, each positive
    gets weight alpha / (N m) and each negative (m - alpha) / (N m (m - 1))::

        J_alpha = mean_i pos_i
                  - log[ alpha / (N m) * sum_i exp(pos_i)
                         + (m - alpha) / (N m (m - 1)) * sum_ij exp(neg_ij) ]

    The weights sum to one. J_alpha never exceeds log(m / alpha). With
    alpha = 1 it never exceeds InfoNCE on the scores of a square in-batch
    matrix (Jensen). A smaller alpha raises the ceiling, but J_alpha is a lower
    bound on the MI only for alpha >= :func:`alpha_floor` (n, m) =
    m / (n (m - 1) + 1), n = N rows; below it J_alpha can exceed the true MI
    (by 0.32 nats at true MI 6 with n = m = 32 and alpha = 1e-4, exact critic).
    Requires 0 < alpha <= m.

    What it reports:

    - ``loss``: -J at the training alpha (``current_alpha``), or with
      ``kl_over_alpha`` the authors' (log(m / alpha) - J) / alpha, the KL
      divergence their code minimises divided by alpha; its gradient is 1 /
      alpha times ours, so it grows as their schedule lowers alpha.
    - ``mi``: J at max(alpha, floor), on the same scores: always a bound.
    - ``ceiling``: log(m / max(alpha, floor)).
    - ``estimate``: J at the training alpha when that alpha is below the floor
      (an estimate, not a bound); None otherwise.

    The floor assumes the N rows are independent positive pairs whose
    negatives are independent of them (i.i.d. rows, or an n x n matrix from
    ``matrix_pairs``). SimCLR's in-batch rows repeat each pair twice and
    score twin views of each negative image, so the methods certify their
    bound on the cross-view matrix instead (infoview.pretrain.methods).

    Schedule: with ``alpha_start`` and ``anneal_epochs`` > 0, alpha moves
    geometrically (linearly in log alpha) from ``alpha_start`` at epoch 0 to
    ``alpha`` at ``anneal_epochs``, then stays there. The authors' MoCo code
    for CIFAR (``--ml-cpc-alpha-geo``) uses this curve but steps it once per
    epoch over the whole run; the engine steps it every iteration. Call
    :meth:`set_epoch` and read :attr:`current_alpha`.

    Pooled: the normaliser sums over every row, so under DDP each rank gathers
    the per-row terms (each row's positive and the log-sum-exp of its
    negatives, with gradients) from every rank and computes the global value.
    """

    certifies = ("ML-CPC at max(alpha, floor m / (n (m - 1) + 1)); ceiling log(m / that alpha); "
                 "below the floor, J at alpha is an estimate")

    pooled = True

    @classmethod
    def known_mi_grid(cls, m: int) -> list[dict]:
        """alpha from far below the floor (where ``.mi`` is J at the floor) to m, and the authors' loss."""
        return [{"alpha": a} for a in (1e-4, 1e-2, 0.1, 0.5, 1.0, 4.0, float(m))] + [
            {"alpha": 1e-3, "kl_over_alpha": True}]

    def __init__(
        self, alpha: float = 1.0, alpha_start: float | None = None, anneal_epochs: float = 0.0,
        kl_over_alpha: bool = False,
    ) -> None:
        super().__init__()
        alpha = _positive("alpha", alpha)
        anneal_epochs = float(anneal_epochs)
        if not (anneal_epochs >= 0.0 and math.isfinite(anneal_epochs)):
            raise ValueError(f"ml_cpc: anneal_epochs must be >= 0, got {anneal_epochs}")
        if alpha_start is not None:
            alpha_start = _positive("alpha_start", alpha_start)
            if anneal_epochs == 0.0:
                raise ValueError("ml_cpc: alpha_start needs anneal_epochs > 0 (the epochs over which alpha moves)")
        if not isinstance(kl_over_alpha, bool):
            raise ValueError(f"ml_cpc: kl_over_alpha must be true or false, got {kl_over_alpha!r}")
        self.alpha = alpha
        self.alpha_start = alpha_start
        self.anneal_epochs = anneal_epochs
        self.kl_over_alpha = kl_over_alpha
        self.current_alpha = alpha if alpha_start is None else alpha_start

    def extra_repr(self) -> str:
        text = f"alpha={self.alpha}"
        if self.alpha_start is not None:
            text += (f", alpha_start={self.alpha_start}, anneal_epochs={self.anneal_epochs}, "
                     f"current_alpha={self.current_alpha:.6g}")
        return text + (", kl_over_alpha=True" if self.kl_over_alpha else "")

    def set_epoch(self, epoch: float) -> None:
        """Move alpha geometrically from ``alpha_start`` (epoch 0) to ``alpha`` (``anneal_epochs``)."""
        if self.alpha_start is None:
            return
        frac = min(max(float(epoch) / self.anneal_epochs, 0.0), 1.0)
        if frac >= 1.0:
            self.current_alpha = self.alpha  # exact at the end
        else:
            self.current_alpha = math.exp((1 - frac) * math.log(self.alpha_start) + frac * math.log(self.alpha))

    @torch.no_grad()
    def bound(self, pos, neg, k=None):
        # rows with fewer candidates than training's (the cross-view matrix) may have m < alpha:
        # J at m is still a bound there, so the alpha is moved down to m instead of refused
        rows = self.rows(pos, neg, k)
        k = neg.shape[1] if k is None else int(k)
        with _no_autocast(pos):
            return _wrap(self._terms(rows, k, min(self.current_alpha, float(k + 1))), k)

    def row_terms(self, pos, neg):
        return pos, row_lse(neg)[:, 0]

    def pool(self, rows, k):
        m = k + 1
        if self.current_alpha > m:
            raise ValueError(
                f"ml_cpc: alpha = {self.current_alpha:g} exceeds m = K + 1 = {m} candidates per row; "
                "the negatives would get negative weight. Use alpha <= m."
            )
        return self._terms(rows, k, self.current_alpha)

    def _terms(self, rows, k: int, alpha: float) -> Terms:
        """Train at ``alpha``; certify at max(alpha, floor)."""
        pos, lse_neg = rows
        n, m = pos.shape[0], k + 1
        j = ml_cpc_value(pos, lse_neg, k, alpha)
        loss = (math.log(m / alpha) - j) / alpha if self.kl_over_alpha else -j
        a_bound = max(alpha, alpha_floor(n, m))
        if a_bound == alpha:
            return Terms(loss, j, math.log(m / alpha))
        with torch.no_grad():
            mi = ml_cpc_value(pos.detach(), lse_neg.detach(), k, a_bound)
        return Terms(loss, mi, math.log(m / a_bound), estimate=j)
