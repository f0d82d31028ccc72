"""Methods turn views into (pos, neg) critic scores; the objective does the rest.

- :class:`SimCLR`: every view of every image goes through the encoder and the
  projector; positives are the other views of the same image, negatives every
  view of every other image in the **global** batch (gathered from all ranks
  with gradients, see :mod:`infoview.runtime.distributed`).
- :class:`MoCo`: queries from the encoder, keys from a momentum (EMA) copy,
  negatives from a queue of past keys. Defaults are MoCo v2's (Chen et al.
  2020): momentum 0.999, temperature 0.2, one view as the query and the other
  as its key (``symmetric=True`` adds the swapped pair, as MoCo v3 does).
  BatchNorm must not see a query and its key in one batch: under DDP the keys
  are computed on a batch shuffled across ranks (``bn=shuffle``, MoCo's own
  fix); on one process both encoders use split BatchNorm over ``bn_splits``
  groups and the keys' batch is shuffled before the key encoder
  (``bn=split``, what MoCo's single-GPU CIFAR-10 demo does); ``bn=sync``
  converts BatchNorm to SyncBN. ``bn=auto`` (the default) picks shuffle under
  DDP and split on one process.

Any registered objective works with either. Objectives whose loss is a mean of
per-row terms (InfoNCE, Ring, HCL, DCL, NWJ, JS) are computed on each rank's
own rows; an objective that pools all rows into one normaliser (ML-CPC,
``Objective.pooled``) gets each row's few per-row terms gathered from every
rank with gradients, so that under DDP it is the very same function of the
global batch as in one process. Both give the single-process gradient
(tests/pretrain).

What the MI figure means: the rows a method trains on are not ones on which
the objectives' bounds are proven. SimCLR's in-batch rows count every
positive pair twice and score both (correlated) views of each negative image,
which lets ML-CPC's pooled value pass the true MI at its alpha floor; a MoCo
queue holds keys from older encoders, so its negatives are scored by another
critic than the positive. So each step a method also builds the cross-view
matrix of the global batch (first view's embeddings against the second's,
``objectives.cross_view_pairs``: n = m = global batch) and reports the
objective's bound on it as ``mi``, with its ``ceiling``. What the training
rows read is kept as ``mi_estimate``, an estimate, not a bound. The extra
matrix costs one n x n product without gradients. The bound is for the
critic as it scores that batch; BatchNorm in training mode makes the critic
depend on the batch, which the certificate does not cover.

Each method also trains an online linear probe on detached features of the
first view (when the data has labels): a monitor, never a training signal
for the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError
from infoview.models import MomentumEncoder, NegativeQueue, momentum_at
from infoview.models.split_bn import convert_split_bn
from infoview.objectives import Objective, ObjectiveOutput, cross_view_pairs, in_batch_pairs, queue_logits
from infoview.runtime import distributed as D

METHODS = ("simclr", "moco")
MOCO_BN = ("auto", "shuffle", "split", "sync", "none")


@dataclass
class StepOutput:
    loss: torch.Tensor  # what to backpropagate: the objective's loss plus the probe's
    ssl_loss: torch.Tensor  # detached
    mi: torch.Tensor  # detached: the objective's certified bound on the cross-view matrix, nats
    ceiling: float  # the most that bound can read (may be inf)
    mi_estimate: torch.Tensor  # detached: what the training rows read; not a bound
    probe_loss: torch.Tensor  # detached (0 without labels)
    probe_correct: torch.Tensor  # detached count of correct probe predictions on this rank's batch
    probe_count: torch.Tensor


class Method(nn.Module):
    def __init__(self, encoder: nn.Module, projector: nn.Module, objective: Objective, num_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.objective = objective
        self.probe = nn.Linear(encoder.feature_dim, num_classes) if num_classes > 0 else None

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        """Schedules that follow training progress: the objective's (Ring's outer threshold, ML-CPC's alpha)."""
        self.objective.set_epoch(epoch)

    def probe_parameters(self) -> list[nn.Parameter]:
        return list(self.probe.parameters()) if self.probe is not None else []

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the first view (B, F) and embeddings of all views (V, B, D).

        Views of one size go through the encoder together (multi-crop has two sizes).
        """
        b = views[0].shape[0]
        feats, embs, i = [], [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape == views[i].shape:
                j += 1
            f = self.encoder(torch.cat(views[i:j]))
            feats.append(f)
            embs.append(self.projector(f))
            i = j
        return feats[0][:b], torch.cat(embs).view(len(views), b, -1)

    def _objective(self, pos: torch.Tensor, neg: torch.Tensor, k: int | None = None) -> ObjectiveOutput:
        """The objective on these rows; ``k``: negatives per row when ``neg`` holds -inf entries."""
        k = neg.shape[1] if k is None else k
        if self.objective.pooled and D.is_distributed():
            rows = tuple(D.gather_with_grad(r) for r in self.objective.rows(pos, neg, k))
            return self.objective.from_rows(rows, k)
        return self.objective(pos, neg, k)

    @torch.no_grad()
    def _certify(self, a: torch.Tensor, b: torch.Tensor) -> ObjectiveOutput:
        """The objective's bound on the cross-view matrix of the whole batch (a_i against every b_j)."""
        pos, neg = cross_view_pairs(a.detach(), b.detach(), self.temperature)
        return self.objective.bound(pos, neg)

    def _finish(self, out: ObjectiveOutput, cert: ObjectiveOutput, first_feats: torch.Tensor,
                labels: torch.Tensor | None) -> StepOutput:
        zero = out.loss.detach().new_zeros(())
        probe_loss, correct, count = zero, zero, zero
        loss = out.loss
        if self.probe is not None and labels is not None:
            logits = self.probe(first_feats.detach().float())
            known = labels >= 0
            count = known.sum().to(logits.dtype)
            # a sum over labelled rows / their count: defined (0) when a batch has none
            probe_loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")[known].sum() / count.clamp(min=1)
            loss = loss + probe_loss
            correct = (logits.argmax(1) == labels)[known].sum().to(logits.dtype)
            probe_loss = probe_loss.detach()
        estimate = out.estimate if out.estimate is not None else out.mi
        return StepOutput(loss, out.loss.detach(), cert.mi, cert.ceiling, estimate, probe_loss, correct.detach(),
                          count.detach())


class SimCLR(Method):
    """In-batch contrastive learning (Chen et al. 2020) with any objective."""

    def __init__(self, encoder, projector, objective, num_classes: int = 0, temperature: float = 0.2):
        super().__init__(encoder, projector, objective, num_classes)
        self.temperature = float(temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> StepOutput:
        first, z = self.embed(views)
        v, b, d = z.shape
        if D.is_distributed():
            all_z = D.gather_with_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)  # (V, B_total, D)
            offset = torch.distributed.get_rank() * b
            pos, neg, k = in_batch_pairs(z, self.temperature, all_views=all_z, offset=offset, masked=True)
        else:
            all_z = z
            pos, neg, k = in_batch_pairs(z, self.temperature, masked=True)
        # masked: the negatives stay in the score matrix (their own image's columns -inf), not copied out
        out = self._objective(pos, neg, k)
        return self._finish(out, self._certify(all_z[0], all_z[1]), first, labels)


class MoCo(Method):
    """Momentum contrast (He et al. 2020; MoCo v2, Chen et al. 2020) with any objective."""

    def __init__(
        self, encoder, projector, objective, num_classes: int = 0, temperature: float = 0.2,
        queue_size: int = 65536, momentum: float = 0.999, momentum_final: float | None = None, bn: str = "auto",
        bn_splits: int = 8, symmetric: bool = False, predictor: nn.Module | None = None, seed: int = 0,
    ):

        super().__init__(encoder, projector, objective, num_classes)
        self.temperature = float(temperature)
        self.predictor = predictor
        self.bn = resolve_moco_bn(bn, D.is_distributed())
        self.bn_splits = int(bn_splits)
        if self.bn == "split":
            if self.bn_splits < 2:
                raise ConfigError(f"moco.bn=split needs moco.bn_splits >= 2, got {bn_splits}")
            convert_split_bn(self.encoder, self.bn_splits)
            convert_split_bn(self.projector, self.bn_splits)
        self.symmetric = bool(symmetric)
        self.base_momentum = float(momentum)
        # MoCo keeps the momentum constant; BYOL-style runs raise it to momentum_final on a cosine
        if momentum_final is not None and not isinstance(momentum_final, (int, float)):
            raise ConfigError(f"moco.momentum_final must be a number or null (constant momentum), got {momentum_final!r}")
        self.final_momentum = self.base_momentum if momentum_final is None else float(momentum_final)
        momentum_at(0, 1, self.base_momentum, self.final_momentum)  # checks the values
        self._momentum_at = momentum_at
        self.momentum = self.base_momentum
        self.key = MomentumEncoder(nn.Sequential(encoder, projector))
        self.key.train()
        self.queue = NegativeQueue(projector.out_dim, queue_size, seed=seed)

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        super().set_progress(step, total_steps, epoch)
        self.momentum = self._momentum_at(step, total_steps, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn == "shuffle":
            x, undo = D.shuffle_across_ranks(x)  # from the global RNG, which checkpoints save
            return D.unshuffle_across_ranks(self.key(x), undo)
        if self.bn == "split":
            # MoCo's single-GPU shuffle: a key lands in another BatchNorm group than its query
            perm = torch.randperm(x.shape[0], device=x.device)
            keys = self.key(x[perm])
            return keys[torch.argsort(perm)]
        return self.key(x)

    def _queries(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the first view and the query embeddings (Vq, B, D) of the views that are queries."""
        first, q = self.embed(views if self.symmetric else views[:1])
        if self.predictor is not None:
            q = self.predictor(q.flatten(0, 1)).view(q.shape[0], q.shape[1], -1)
        return first, q

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 2 or views[0].shape != views[1].shape:
            raise ValueError(f"moco takes 2 views of one size, got {[tuple(v.shape) for v in views]}")
        first, q = self._queries(views)
        with torch.no_grad():
            self.key.update(nn.Sequential(self.encoder, self.projector), self.momentum)
            k1 = self._keys(views[1])
            k0 = self._keys(views[0]) if self.symmetric else None
        queue = self.queue.negatives
        pos, neg = queue_logits(q[0], k1, queue, self.temperature)
        if self.symmetric:
            pos2, neg2 = queue_logits(q[1], k0, queue, self.temperature)
            pos, neg = torch.cat([pos, pos2]), torch.cat([neg, neg2])
        out = self._objective(pos, neg)
        cert = self._certify(D.gather_no_grad(q[0].detach()), D.gather_no_grad(k1))
        keys = torch.cat([k1, k0]) if self.symmetric else k1
        self.queue.enqueue(D.gather_no_grad(F.normalize(keys.float(), dim=-1)))
        return self._finish(out, cert, first, labels)


def resolve_moco_bn(bn: str, distributed: bool) -> str:
    """``auto`` -> shuffle under DDP, split on one process; shuffle on one process is refused."""
    if bn not in MOCO_BN:
        raise ConfigError(f"moco.bn must be one of {', '.join(MOCO_BN)}, got '{bn}'")
    if bn == "auto":
        return "shuffle" if distributed else "split"
    if bn in ("shuffle", "sync") and not distributed:
        what = "shuffles keys across processes" if bn == "shuffle" else "syncs BatchNorm across processes"
        raise ConfigError(
            f"moco.bn={bn} {what}, and this run has one: query and key BatchNorm would see the same images. "
            "Use moco.bn=split (or auto), MoCo's single-GPU recipe, or moco.bn=none for a model without BatchNorm"
        )
    return bn
