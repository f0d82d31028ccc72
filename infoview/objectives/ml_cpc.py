"""Multi-label contrastive predictive coding (Song & Ermon, NeurIPS 2020)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, register


def _positive(name: str, value) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"ml_cpc: {name} must be a positive number, got {value}")
    return value


@register("ml_cpc")
class MLCPC(Objective):
    r"""alpha-ML-CPC (Song, Ermon, "Multi-label Contrastive Predictive Coding",
    NeurIPS 2020).

    Instead of one softmax per row, all N positives and N K negatives of the
    batch share one normaliser. With m = K + 1 candidates per row, each positive
    gets weight alpha / (N m) and each negative (m - alpha) / (N m (m - 1))::

        mi   = mean_i pos_i
               - log[ alpha / (N m) * sum_i exp(pos_i)
                      + (m - alpha) / (N m (m - 1)) * sum_ij exp(neg_ij) ]
        loss = -mi

    The weights sum to one, so with alpha = 1 every term weighs 1 / (N m) and,
    on the scores of a square in-batch matrix, the value never exceeds InfoNCE on
    the same scores (Jensen). Lowering alpha gives the positives less weight in
    the normaliser, which raises the ceiling of the bound from log m to
    log(m / alpha) at the cost of a biased-but-useful estimate; the paper finds
    alpha < 1 helps when the true MI is well above log m. Requires
    0 < alpha <= m; alpha > m would give the negatives negative weight.
    With N = m = n (an n x n score matrix) this is the paper's estimator.
    The sum is a single log-sum-exp over all N + N K scores with log-weights.

    Schedule: with ``alpha_start`` and ``anneal_epochs`` > 0, alpha moves
    geometrically (linearly in log alpha) from ``alpha_start`` at epoch 0 to
    ``alpha`` at ``anneal_epochs``, then stays there; this is the schedule of the
    authors' representation-learning code, which anneals alpha from a high to a
    low value over training. Call :meth:`set_epoch` and read
    :attr:`current_alpha`. Because the normaliser pools all rows, the engine
    gathers the rows of every rank before calling it (``pooled``).
    """

    pooled = True

    def __init__(self, alpha: float = 1.0, alpha_start: float | None = None, anneal_epochs: float = 0.0) -> None:
        super().__init__()
        alpha = _positive("alpha", alpha)
        anneal_epochs = float(anneal_epochs)
        if not (anneal_epochs >= 0.0 and math.isfinite(anneal_epochs)):
            raise ValueError(f"ml_cpc: anneal_epochs must be >= 0, got {anneal_epochs}")
        if alpha_start is not None:
            alpha_start = _positive("alpha_start", alpha_start)
            if anneal_epochs == 0.0:
                raise ValueError("ml_cpc: alpha_start needs anneal_epochs > 0 (the epochs over which alpha moves)")
        self.alpha = alpha
        self.alpha_start = alpha_start
        self.anneal_epochs = anneal_epochs
        self.current_alpha = alpha if alpha_start is None else alpha_start

    def extra_repr(self) -> str:
        if self.alpha_start is None:
            return f"alpha={self.alpha}"
        return (
            f"alpha={self.alpha}, alpha_start={self.alpha_start}, anneal_epochs={self.anneal_epochs}, "
            f"current_alpha={self.current_alpha:.6g}"
        )

    def set_epoch(self, epoch: float) -> None:
        """Move alpha geometrically from ``alpha_start`` (epoch 0) to ``alpha`` (``anneal_epochs``)."""
        if self.alpha_start is None:
            return
        frac = min(max(float(epoch) / self.anneal_epochs, 0.0), 1.0)
        if frac >= 1.0:
            self.current_alpha = self.alpha  # exact at the end
        else:
            self.current_alpha = math.exp((1 - frac) * math.log(self.alpha_start) + frac * math.log(self.alpha))

    def compute(self, pos, neg):
        n, k = neg.shape
        m = k + 1
        alpha = self.current_alpha
        if alpha > m:
            raise ValueError(
                f"ml_cpc: alpha = {alpha} exceeds m = K + 1 = {m} candidates per row; "
                "the negatives would get negative weight. Use alpha <= m."
            )
        log_w_pos = math.log(alpha / (n * m))
        # alpha == m leaves the negatives weight 0: log 0 = -inf drops them from the sum
        w_neg = (m - alpha) / (n * m * (m - 1))
        log_w_neg = math.log(w_neg) if w_neg > 0 else -math.inf
        terms = torch.cat([pos + log_w_pos, neg.reshape(-1) + log_w_neg])
        mi = pos.mean() - torch.logsumexp(terms, dim=0)
        return -mi, mi
