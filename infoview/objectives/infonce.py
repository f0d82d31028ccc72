"""InfoNCE, the contrastive predictive coding bound (van den Oord et al. 2018)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, Terms, register


def infonce_bound(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The InfoNCE estimate in nats: mean_i [pos_i - LSE(pos_i, neg_i.)] + log(K + 1).

    Used by InfoNCE itself and reported as ``.mi`` by the objectives that train
    with another loss on the same scores (hard-negative, debiased).
    """
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (pos - torch.logsumexp(logits, dim=1)).mean() + math.log(neg.shape[1] + 1)


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

    def compute(self, pos, neg):
        mi = infonce_bound(pos, neg)
        return Terms(-mi, mi, math.log(neg.shape[1] + 1))
