"""Variational bounds of Poole et al. (ICML 2019): NWJ, and the JS-trained NWJ."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infoview.objectives.base import Objective, Terms, register


class _MeanExp(torch.autograd.Function):
    """mean(exp(x)) over ``count`` elements (those of x that are not -inf), from a log-mean-exp.

    The value overflows only when the mean itself does. The gradient is written
    per element, exp(x_ij) / n, so an overflowing value gives inf gradients on
    the elements that cause it and exact ones elsewhere, never NaN (autograd
    through exp(logmeanexp(x)) would multiply inf by zero softmax weights).
    """

    generate_vmap_rule = True  # so that torch.func.vmap can batch it (the exact-critic tests do)

    @staticmethod
    def forward(x, count):
        return torch.exp(torch.logsumexp(x.reshape(-1), dim=0) - math.log(count))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.count = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x - math.log(ctx.count)), None


def nwj_bound(pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """NWJ estimate in nats: mean(pos) - e^{-1} mean(exp(neg)) = 1 + E_p[f - 1] - E_q[e^{f - 1}].

    It is -inf when exp(neg - 1) overflows (the bound is then vacuous), not NaN.
    ``k``: negatives per row when ``neg`` holds -inf entries that are not negatives.
    """
    k = neg.shape[1] if k is None else k
    return pos.mean() - _MeanExp.apply(neg - 1.0, neg.shape[0] * k)


@register("nwj")
class NWJ(Objective):
    r"""NWJ / f-divergence bound (Nguyen, Wainwright, Jordan 2010), in the form of
    Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
    Information", ICML 2019 (their I_NWJ, the TUBA bound with baseline e)::

        mi   = 1 + E_p[f - 1] - E_q[exp(f - 1)]
             = mean_i pos_i - e^{-1} mean_ij exp(neg_ij)
        loss = -mi

    Unlike InfoNCE it has no log m ceiling: it can certify large MI, but its
    variance grows exponentially with the MI. The mean of exp is taken through a
    log-mean-exp; huge negative scores (above ~88 in float32) make the value
    -inf and the loss +inf, which is what the bound is there, but never NaN.
    """

    certifies = "NWJ bound; no ceiling"

    def __init__(self) -> None:
        super().__init__()

    def compute(self, pos, neg, k):
        mi = nwj_bound(pos, neg, k)
        return Terms(-mi, mi, math.inf)


@register("js")
class JS(Objective):
    r"""Jensen-Shannon-trained critic, evaluated with NWJ (Poole et al., ICML
    2019, their I_JS; the f-GAN JS loss of Nowozin et al. 2016, as used by
    Hjelm et al.'s Deep InfoMax)::

        loss = mean_i softplus(-pos_i) + mean_ij softplus(neg_ij)
        mi   = mean_i pos_i - e^{-1} mean_ij exp(neg_ij)     (NWJ on the same scores)

    The JS loss has low variance and trains the critic stably; its optimal
    critic is the log density ratio log r, which is also what NWJ needs up to a
    shift: NWJ evaluated at log r reads I - 1/e (at log r + 1 it would be tight).
    ``mi`` may be -inf when a negative score is huge; the loss stays finite.
    """

    certifies = "NWJ bound on the JS-trained critic; no ceiling"

    def __init__(self) -> None:
        super().__init__()

    def compute(self, pos, neg, k):
        # softplus(-inf) = 0: entries that are not negatives add nothing to the sum over N k
        loss = F.softplus(-pos).mean() + F.softplus(neg).sum() / (neg.shape[0] * k)
        with torch.no_grad():
            mi = nwj_bound(pos, neg, k)
        return Terms(loss, mi, math.inf)
