"""Instance recognition with a memory bank (Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), with any objective.

One view of each image goes through the encoder and the projector; its L2-normalised embedding q_i is
scored against a bank that holds one L2-normalised row per image of the training split
(:class:`infoview.models.MemoryBank`), f(x_i, j) = <q_i, bank_j> / t:

- positive: the image's own row, pos_i = <q_i, bank[idx_i]> / t (the row its view left the last time the
  image was seen, or the random initial row before that);
- negatives: ``ir.num_negatives`` = K rows drawn for each view uniformly, with replacement, from the
  N - 1 rows of *other* images (``MemoryBank.sample``: never the view's own row); ``ir.num_negatives=0``
  scores the view against the whole bank, every other row a negative (K = N - 1). Either way the scores
  are one (B, N) product of the batch with the whole bank (256 x 50,000 on CIFAR-10), from which the
  positives and the drawn negatives are picked: cheaper than gathering B x K rows of the bank.

The objective (``objective.name``, any registered one) reads (pos, neg). After the loss, the rows of the
batch take the batch's embeddings, gathered from every rank, so that every rank's bank stays the same::

    bank[i] <- normalize(m * bank[i] + (1 - m) * q_i),    m = ir.bank_momentum

m = 0.5 is the IR paper's (the default); m = 0 replaces the row, as the ring repository's configs do
(infoview/configs/ir_cifar10.yaml). Under DDP every rank draws the negatives of the whole global batch from the
same random stream (the engine seeds every rank alike and checkpoints it) and keeps its own rows: the
run is then the same function of the global batch as one process on it (tests/pretrain/test_ir.py).

What ``mi`` is: :meth:`Method._certify_bank`, each view against the bank, taken before the bank takes the
batch (objectives.bank_bound), normalised over the images the epoch has not visited yet: a lower bound on
I(view; image index | the run so far), ceiling log of their number. What the training rows read (K drawn
rows, or a ring of them) is ``mi_estimate``, not a bound.

Departures from the ring authors' code (mhw32/contrastive-ring-public, src/objectives/instdisc.py):

- their ``NCE`` draws its k - 1 = 4095 noise rows from *all* N rows (the image's own row among them now
  and then) and puts the positive in the denominator beside them; here K negatives come from the other
  rows only, and the objective adds the positive (InfoNCE: K + 1 candidates, log(K + 1) at most);
- their ``NCERing`` (IR-Ring) scores the whole bank (the own row included), keeps its top thres_outer,
  drops the top thres_inner of those, then *resamples* k - 1 rows from that ring with replacement and adds
  the positive (``self_negative``). With ``ir.num_negatives=0`` and ``objective.name=ring`` the Ring
  objective keeps the ring of the N - 1 other rows itself, every ring row once, with the positive in the
  denominator too: the same ring, summed instead of resampled;
- the bank starts from Gaussian rows normalised (theirs: uniform in a cube, normalised).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infoview.errors import ConfigError
from infoview.models import EpochVisits, MemoryBank
from infoview.pretrain.methods.base import (
    Method,
    StepOutput,
    at_most,
    method_temperature,
    projector_from_config,
    register_method,
)
from infoview.schema import Key
from infoview.training import distributed as D


@register_method("ir")
class InstanceRecognition(Method):
    """One view against a memory bank of every image's last embedding (Wu et al. 2018), with any objective."""

    DEFAULTS = {
        "temperature": Key(0.07, "the cosine similarities of views and bank rows are divided by it", above=0),
        "num_negatives": Key(4096, "bank rows drawn per view as negatives (other images'); 0: the whole bank",
                             min=0),
        "bank_momentum": Key(0.5, "a bank row keeps this much of itself when its image is seen; 0: replaced",
                             min=0, below=1),
    }
    num_views = 1
    needs_indices = True
    demo = ("infoview pretrain --config demo method=ir out_dir=runs/demo_ir augment.num_views=1 "
            "ir.num_negatives=1024")

    @classmethod
    def needs(cls, cfg, num_samples: int) -> list[str]:
        k, n = cfg.ir.num_negatives, num_samples
        if n >= 2 and isinstance(k, int) and not 0 <= k < n:
            return [f"ir.num_negatives={at_most(n - 1)} or fewer (drawn from the split's {n - 1:,} other images; "
                    f"got {k}; 0: all of them)"]
        return []

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "InstanceRecognition":
        ic = cfg.ir
        proj = projector_from_config(cfg.model, encoder.feature_dim)
        return cls(encoder, proj, objective, num_classes, num_samples=num_samples,
                   temperature=method_temperature(cfg), num_negatives=ic.num_negatives,
                   bank_momentum=ic.bank_momentum, seed=cfg.train.seed)

    def __init__(self, encoder, projector, objective, num_classes: int = 0, num_samples: int = 0,
                 temperature: float = 0.07, num_negatives: int = 4096, bank_momentum: float = 0.5, seed: int = 0):
        super().__init__(encoder, projector, objective, num_classes)
        n, k = num_samples, num_negatives
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"method=ir keeps one bank row per training image and needs at least 2 images, got {n}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise ConfigError(f"ir.num_negatives={k} draws from the {n - 1} other images of the split: expected an "
                              f"int in [1, {n - 1}], or 0 for the whole bank")
        m = bank_momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
            raise ConfigError(f"ir.bank_momentum={m} is what a bank row keeps of itself: expected a number in [0, 1)")
        if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
            raise ConfigError(f"ir.temperature divides the scores: it must be a positive number, got {temperature}")
        self.temperature = float(temperature)
        self.num_negatives = k
        self.bank = MemoryBank(n, projector.out_dim, momentum=float(m), seed=seed)  # not broadcast by DDP (Method)
        self.visits = EpochVisits(n)  # the images this epoch has visited: the bound's normaliser leaves them out

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None,
                indices: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 1:
            raise ValueError(f"ir takes 1 view, got {len(views)}")
        if indices is None or indices.shape != (views[0].shape[0],):
            raise ValueError("ir needs each image's index in the training split, one per row (the loader's "
                             "with_indices)")
        first, z = self.embed(views)
        indices = indices.to(self.bank.bank.device).long()
        everyone = D.gather_no_grad(indices)  # the global batch's images, in rank order
        # a copy: the update below writes the bank in place, and the matmul keeps it for its backward
        bank = self.bank.bank.detach().clone()
        with torch.autocast(z.device.type, enabled=False):
            q = F.normalize(z[0].float(), dim=-1)
            scores = q @ bank.T / self.temperature  # (B, N)
        pos = scores.gather(1, indices[:, None])[:, 0]
        if self.num_negatives == 0:  # every other row: the own one is masked out (-inf), K = N - 1
            neg, k = scores.scatter(1, indices[:, None], -math.inf), self.bank.num_samples - 1
        else:
            neg, k = self._drawn_negatives(scores, indices, everyone, self.num_negatives), None
        out = self._objective(pos, neg, k)
        cert = self._certify_bank(scores, indices, everyone)  # before the bank takes this batch
        self.bank.update(everyone, D.gather_no_grad(q.detach()))
        return self._finish(out, cert, first, labels)

    def extra_repr(self) -> str:
        k = "whole bank" if self.num_negatives == 0 else self.num_negatives
        return f"temperature={self.temperature}, num_negatives={k}"
