"""Multi-label contrastive predictive coding (Song & Ermon, NeurIPS 2020)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, register


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
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        alpha = float(alpha)
        if not (alpha > 0.0 and math.isfinite(alpha)):
            raise ValueError(f"ml_cpc: alpha must be a positive number, got {alpha}")
        self.alpha = alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def compute(self, pos, neg):
        n, k = neg.shape
        m = k + 1
        if self.alpha > m:
            raise ValueError(
                f"ml_cpc: alpha = {self.alpha} exceeds m = K + 1 = {m} candidates per row; "
                "the negatives would get negative weight. Use alpha <= m."
            )
        log_w_pos = math.log(self.alpha / (n * m))
        # alpha == m leaves the negatives weight 0: log 0 = -inf drops them from the sum
        w_neg = (m - self.alpha) / (n * m * (m - 1))
        log_w_neg = math.log(w_neg) if w_neg > 0 else -math.inf
        terms = torch.cat([pos + log_w_pos, neg.reshape(-1) + log_w_neg])
        mi = pos.mean() - torch.logsumexp(terms, dim=0)
        return -mi, mi
