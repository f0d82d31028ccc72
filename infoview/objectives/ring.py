"""Ring discrimination: negatives drawn from a band of similarity (Wu et al. 2020)."""
from __future__ import annotations

import math

import torch

from infoview.objectives.base import Objective, Terms, register
from infoview.objectives.infonce import infonce_bound
from infoview.objectives.lse import row_lse


def _floor(x: float) -> int:
    # 0.7 * 10 is 6.999999999999999 in floating point: round off such noise first
    return math.floor(round(x, 9))


def ring_ranks(outer: float, inner: float, k: int) -> tuple[int, int]:
    """(n_in, n_out): keep the negatives ranked n_in .. n_out - 1, hardest first.

    n_out = floor(outer K) and n_in = floor(inner n_out), as the reference code
    (mhw32/contrastive-ring-public, ``int(thres_outer * k)``). Where outer K < 1
    the reference keeps no negative at all; we keep the hardest one (n_out = 1).
    """
    n_out = min(k, max(1, _floor(outer * k)))
    n_in = _floor(inner * n_out)
    return n_in, n_out


@register("ring")
class Ring(Objective):
    r"""Ring NCE (Wu, Zhuang, Mosse, Yamins, Goodman, "On Mutual Information in
    Contrastive Learning for Visual Representations", 2020).

    Each row keeps only the negatives in a "ring" of similarity around its
    anchor: sort the K negatives by score, most similar first, and keep ranks
    n_in .. n_out - 1, where n_out = floor(outer K) (at least 1) and
    n_in = floor(inner n_out). The loss is the cross-entropy of the positive
    against itself plus the kept negatives R_i::

        loss = mean_i [ log( exp(pos_i) + sum_{j in R_i} exp(neg_ij) ) - pos_i ]

    ``outer`` drops the easy (far) negatives, ``inner`` drops the very closest
    ones, which are likely to be views of the same class (false negatives).

    What it reports: ``mi`` is InfoNCE over *all* K negatives on the same
    scores, a valid lower bound (ceiling log(K + 1)). The value the ring's own
    loss implies, log(1 + n_out - n_in) - loss, is kept as ``estimate``. It is
    not a bound on I(X; Y): the kept negatives are chosen by their scores, so
    they are no longer samples of p(y) (with an exact critic of true MI 0.5 it
    read 1.30 nats at outer = 1, inner = 0.5).

    ``anneal_epochs`` > 0 starts with outer = 1 (all negatives) and shrinks it
    linearly to the target over that many epochs; call :meth:`set_epoch` (with
    fractional epochs if you like) and read :attr:`current_outer`.
    """

    certifies = "InfoNCE over all K negatives; ceiling log m; the ring's own value is an estimate"

    @classmethod
    def known_mi_grid(cls, m: int) -> list[dict]:
        """outer and inner across (0, 1]: every ring, the widest and the narrowest."""
        return [{"outer": o, "inner": i} for o, i in
                [(1.0, 0.0), (1.0, 0.5), (0.5, 0.5), (0.1, 0.1), (0.05, 0.0), (0.3, 0.9), (1.0, 0.99)]]

    def __init__(self, outer: float = 0.1, inner: float = 0.1, anneal_epochs: float = 0.0) -> None:
        super().__init__()
        outer, inner, anneal_epochs = float(outer), float(inner), float(anneal_epochs)
        if not 0.0 < outer <= 1.0:
            raise ValueError(f"ring: outer must be in (0, 1], got {outer}")
        if not 0.0 <= inner < 1.0:
            raise ValueError(f"ring: inner must be in [0, 1), got {inner}")
        if not (anneal_epochs >= 0.0 and math.isfinite(anneal_epochs)):
            raise ValueError(f"ring: anneal_epochs must be >= 0, got {anneal_epochs}")
        self.outer = outer
        self.inner = inner
        self.anneal_epochs = anneal_epochs
        self.current_outer = 1.0 if anneal_epochs > 0 else outer

    def extra_repr(self) -> str:
        return (
            f"outer={self.outer}, inner={self.inner}, anneal_epochs={self.anneal_epochs}, "
            f"current_outer={self.current_outer}"
        )

    def set_epoch(self, epoch: float) -> None:
        """Move the outer threshold linearly from 1.0 (epoch 0) to ``outer``."""
        if self.anneal_epochs <= 0:
            return
        frac = min(max(float(epoch) / self.anneal_epochs, 0.0), 1.0)
        self.current_outer = self.outer * frac + 1.0 * (1.0 - frac)  # exact at both ends

    def ranks(self, k: int) -> tuple[int, int]:
        """(n_in, n_out) for rows of ``k`` negatives at the current threshold."""
        return ring_ranks(self.current_outer, self.inner, k)

    def compute(self, pos, neg, k):
        n_in, n_out = self.ranks(k)
        if n_in == 0 and n_out == k:
            kept = neg  # every negative: no selection needed (-inf entries, if any, add nothing)
        else:
            # -inf entries (not negatives) rank last, below the k that are, so n_out <= k never picks one
            kept = torch.topk(neg, n_out, dim=1, largest=True, sorted=True).values[:, n_in:]
        loss = (torch.logaddexp(pos, row_lse(kept)[:, 0]) - pos).mean()
        estimate = None if kept is neg else math.log(1 + n_out - n_in) - loss
        with torch.no_grad():
            mi = infonce_bound(pos.detach(), neg.detach(), k)
        return Terms(loss, mi, math.log(k + 1), estimate=estimate)
