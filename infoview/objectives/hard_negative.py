"""Hard-negative (HCL) and debiased (DCL) contrastive objectives."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infoview.objectives.base import Objective, Terms, register
from infoview.objectives.lse import row_lse

_LOG2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler's split at -log 2).

    Each branch sees a safe stand-in where it is not used, so that neither its
    value nor its gradient can be inf there (a plain ``where`` would give NaN
    gradients).
    """
    near = x > -_LOG2
    stand_in = torch.full_like(x, -1.0)
    a = torch.log(-torch.expm1(torch.where(near, x, stand_in)))
    b = torch.log1p(-torch.exp(torch.where(near, stand_in, x)))
    return torch.where(near, a, b)


def _row_sums(neg: torch.Tensor, beta: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log reweighted, LSE(neg)) per row, from one pass over ``neg``.

    log reweighted = log K + LSE((1 + beta) neg) - LSE(beta neg); with beta = 0
    (DCL) it is LSE(neg), and with beta = 1 its second term is LSE(neg). The
    plain LSE(neg) is what the InfoNCE bound (``.mi``) needs, so it comes from
    the same pass instead of a second one.
    """
    if beta == 0.0:
        lse = row_lse(neg)[:, 0]
        return lse, lse
    if beta == 1.0:
        both = row_lse(neg, (2.0, 1.0))
        return math.log(k) + both[:, 0] - both[:, 1], both[:, 1]
    three = row_lse(neg, (1.0 + beta, beta, 1.0))
    return math.log(k) + three[:, 0] - three[:, 1], three[:, 2]


def log_debiased_negatives(
    pos: torch.Tensor, neg: torch.Tensor, beta: float, tau_plus: float, temperature: float, k: int | None = None
) -> torch.Tensor:
    """log Ng per row, computed in log space so that scores of 1e4 do not overflow.

    Ng = max((reweighted - tau_plus K p) / (1 - tau_plus), K exp(-1 / temperature)),
    with p = exp(pos) and reweighted = sum_j w_j exp(neg_j) / mean_j w_j,
    w_j = exp(beta neg_j). ``k``: the number of negatives when ``neg`` holds
    -inf entries that are not negatives.
    """
    k = neg.shape[1] if k is None else k
    return _log_ng(pos, _row_sums(neg, beta, k)[0], tau_plus, temperature, k)


def _log_ng(pos: torch.Tensor, log_rw: torch.Tensor, tau_plus: float, temperature: float, k: int) -> torch.Tensor:
    log_k = math.log(k)
    floor = torch.full_like(log_rw, log_k - 1.0 / temperature)
    if tau_plus == 0.0:
        return torch.maximum(log_rw, floor)
    # reweighted - tau_plus K p = reweighted * (1 - exp(d)), d = log(tau_plus K p) - log reweighted;
    # when d >= 0 the difference is <= 0 and the floor wins. The second `where` keeps the
    # unused branch at a harmless input so that its gradient cannot turn into NaN.
    d = math.log(tau_plus * k) + pos - log_rw
    ok = d < 0
    d_safe = torch.where(ok, d, torch.full_like(d, -1.0))
    log_diff = torch.where(ok, log_rw + log1mexp(d_safe), torch.full_like(d, -math.inf))
    return torch.maximum(log_diff - math.log1p(-tau_plus), floor)


class _DebiasedBase(Objective):
    def __init__(self, beta: float, tau_plus: float, temperature: float) -> None:
        super().__init__()
        beta, tau_plus, temperature = float(beta), float(tau_plus), float(temperature)
        if not math.isfinite(beta):
            raise ValueError(f"{self.name}: beta must be a finite number, got {beta}")
        if not 0.0 <= tau_plus < 1.0:
            raise ValueError(f"{self.name}: tau_plus (the class prior) must be in [0, 1), got {tau_plus}")
        if not (temperature > 0.0 and math.isfinite(temperature)):
            raise ValueError(f"{self.name}: temperature must be positive, got {temperature}")
        self.beta = beta
        self.tau_plus = tau_plus
        self.temperature = temperature

    def compute(self, pos, neg, k):
        log_rw, lse = _row_sums(neg, self.beta, k)
        log_ng = _log_ng(pos, log_rw, self.tau_plus, self.temperature, k)
        # -log(p / (p + Ng)) = log(1 + Ng / p) = softplus(log Ng - pos)
        loss = F.softplus(log_ng - pos).mean()
        with torch.no_grad():  # the InfoNCE bound on the same scores, from the LSE already taken
            p, lse = pos.detach(), lse.detach()
            mi = (p - torch.logaddexp(p, lse)).mean() + math.log(k + 1)
        return Terms(loss, mi, math.log(k + 1))


@register("hard_negative")
class HardNegative(_DebiasedBase):
    r"""Hard-negative contrastive loss, HCL (Robinson, Chuang, Sra, Jegelka,
    "Contrastive Learning with Hard Negative Samples", ICLR 2021).

    Negatives are importance-weighted towards the hard ones, w_ij = exp(beta
    neg_ij), and debiased for the chance tau_plus that a "negative" shares the
    anchor's class. With p_i = exp(pos_i)::

        reweighted_i = sum_j w_ij exp(neg_ij) / mean_j w_ij
        Ng_i = max( (reweighted_i - tau_plus K p_i) / (1 - tau_plus),
                    K exp(-1 / temperature) )
        loss = mean_i -log( p_i / (p_i + Ng_i) )

    ``temperature`` only sets the floor K exp(-1/t) of the estimate (the scores
    are already divided by it). ``beta`` = 0 is DCL (``debiased``); beta = 0 and
    tau_plus = 0 is plain InfoNCE's loss. The loss is not itself an MI bound, so
    ``mi`` reports the InfoNCE bound on the same scores. Everything is computed
    in log space: log reweighted = log K + LSE((1+beta) neg) - LSE(beta neg).
    """

    certifies = "InfoNCE on the same scores (the HCL loss is not a bound); ceiling log m"

    @classmethod
    def known_mi_grid(cls, m: int) -> list[dict]:
        """beta (0: DCL) and the class prior tau_plus, from none to a half."""
        return [{"beta": b, "tau_plus": t} for b in (0.0, 1.0, 5.0) for t in (0.0, 0.1, 0.5)]

    def __init__(self, beta: float = 1.0, tau_plus: float = 0.1, temperature: float = 0.5) -> None:
        super().__init__(beta, tau_plus, temperature)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, tau_plus={self.tau_plus}, temperature={self.temperature}"


@register("debiased")
class Debiased(_DebiasedBase):
    r"""Debiased contrastive loss, DCL (Chuang, Robinson, Lin, Torralba, Jegelka,
    "Debiased Contrastive Learning", NeurIPS 2020).

    Corrects the negative term for the chance tau_plus that a sampled negative
    shares the anchor's class. With p_i = exp(pos_i)::

        Ng_i = max( (sum_j exp(neg_ij) - tau_plus K p_i) / (1 - tau_plus),
                    K exp(-1 / temperature) )
        loss = mean_i -log( p_i / (p_i + Ng_i) )

    This is ``hard_negative`` with beta = 0. ``mi`` reports the InfoNCE bound on
    the same scores.
    """

    certifies = "InfoNCE on the same scores (the DCL loss is not a bound); ceiling log m"

    @classmethod
    def known_mi_grid(cls, m: int) -> list[dict]:
        """The class prior tau_plus, from none to a half."""
        return [{"tau_plus": t} for t in (0.0, 0.1, 0.5)]

    def __init__(self, tau_plus: float = 0.1, temperature: float = 0.5) -> None:
        super().__init__(0.0, tau_plus, temperature)

    def extra_repr(self) -> str:
        return f"tau_plus={self.tau_plus}, temperature={self.temperature}"
