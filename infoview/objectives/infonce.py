"""InfoNCE, the contrastive predictive coding bound (van den Oord et al. 2018)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, Terms, register
from infoview.objectives.lse import row_lse


def infonce_bound(pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The InfoNCE estimate in nats: mean_i [pos_i - LSE(pos_i, neg_i.)] + log(K + 1).

    Used by InfoNCE itself and reported as ``.mi`` by the objectives that train
    with another loss on the same scores (hard-negative, debiased). ``k``: the
    number of negatives when ``neg`` holds -inf entries that are not negatives.
    The positive joins each row's log-sum-exp through logaddexp, not by
    concatenating it to a copy of ``neg``.
    """
    k = neg.shape[1] if k is None else k
    return (pos - torch.logaddexp(pos, row_lse(neg)[:, 0])).mean() + math.log(k + 1)


@register("infonce")
class InfoNCE(Objective):
    r"""InfoNCE / CPC (van den Oord, Li, Vinyals, "Representation Learning with
    Contrastive Predictive Coding", 2018).

    With m = K + 1 candidates per row (the positive and K negatives)::

        mi   = mean_i [ pos_i - log( exp(pos_i) + sum_j exp(neg_ij) ) ] + log m
        loss = -mi

    This is the cross-entropy of picking the positive among the m candidates,
    shifted by log m. ``mi`` is a lower bound on the mutual information between
    the two views and can never exceed log m, whatever the critic.
    """

    certifies = "InfoNCE bound; ceiling log m"

    def __init__(self) -> None:
        super().__init__()

    def compute(self, pos, neg, k):
        mi = infonce_bound(pos, neg, k)
        return Terms(-mi, mi, math.log(k + 1))
