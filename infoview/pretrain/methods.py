"""Methods turn views into (pos, neg) critic scores; the objective does the rest.

- :class:`SimCLR`: every view of every image goes through the encoder and the
  projector; positives are the other views of the same image, negatives every
  view of every other image in the **global** batch (gathered from all ranks
  with gradients, see :mod:`infoview.pretrain.distributed`).
- :class:`MoCo`: queries from the encoder, keys from a momentum (EMA) copy,
  negatives from a queue of past keys (MoCo v2; symmetric by default, both
  views serving as query and key). Keys are computed with BN shuffled across
  ranks (``bn=shuffle``, MoCo's fix for BN leaking which sample is the
  positive), or with the online model converted to SyncBN (``bn=sync``).

Any registered objective works with either. Objectives whose loss is a mean of
per-row terms (InfoNCE, Ring, HCL, DCL, NWJ, JS) are computed on each rank's
own rows; an objective that pools all rows into one normaliser (ML-CPC,
``Objective.pooled``) gets the rows of every rank gathered with gradients, so
that under DDP it is the very same function of the global batch as in one
process. Both give the single-process gradient (tests/pretrain).

Each method also trains an online linear probe on detached features of the
first view (when the data has labels): a monitor, never a training signal
for the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infoview.objectives import Objective, in_batch_pairs, queue_logits
from infoview.pretrain import distributed as D

METHODS = ("simclr", "moco")


@dataclass
class StepOutput:
    loss: torch.Tensor  # what to backpropagate: the objective's loss plus the probe's
    ssl_loss: torch.Tensor  # detached
    mi: torch.Tensor  # detached: the MI lower bound in nats
    log_m: float
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

    def _objective(self, pos: torch.Tensor, neg: torch.Tensor):
        if self.objective.pooled and D.is_distributed():
            pos, neg = D.gather_with_grad(pos), D.gather_with_grad(neg)
        return self.objective(pos, neg)

    def _finish(self, out, first_feats: torch.Tensor, labels: torch.Tensor | None) -> StepOutput:
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
        return StepOutput(loss, out.loss.detach(), out.mi, out.log_m, probe_loss, correct.detach(), count.detach())


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
            pos, neg = in_batch_pairs(z, self.temperature, all_views=all_z, offset=offset)
        else:
            pos, neg = in_batch_pairs(z, self.temperature)
        return self._finish(self._objective(pos, neg), first, labels)


class MoCo(Method):
    """Momentum contrast (He et al. 2020; MoCo v2, Chen et al. 2020) with any objective."""

    def __init__(
        self, encoder, projector, objective, num_classes: int = 0, temperature: float = 0.2,
        queue_size: int = 65536, momentum: float = 0.99, momentum_final: float = 1.0, bn: str = "shuffle",
        symmetric: bool = True, predictor: nn.Module | None = None, seed: int = 0,
    ):
        from infoview.models import MomentumEncoder, NegativeQueue, momentum_at

        super().__init__(encoder, projector, objective, num_classes)
        self.temperature = float(temperature)
        self.predictor = predictor
        self.bn = bn
        self.symmetric = bool(symmetric)
        self.base_momentum, self.final_momentum = float(momentum), float(momentum_final)
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
        if self.bn == "shuffle" and D.is_distributed():
            x, undo = D.shuffle_across_ranks(x)  # from the global RNG, which checkpoints save
            return D.unshuffle_across_ranks(self.key(x), undo)
        return self.key(x)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 2 or views[0].shape != views[1].shape:
            raise ValueError(f"moco takes 2 views of one size, got {[tuple(v.shape) for v in views]}")
        first, q = self.embed(views)
        if self.predictor is not None:
            q = self.predictor(q.flatten(0, 1)).view(q.shape[0], q.shape[1], -1)
        with torch.no_grad():
            self.key.update(nn.Sequential(self.encoder, self.projector), self.momentum)
            k0, k1 = self._keys(views[0]), self._keys(views[1])
        queue = self.queue.negatives.to(q.dtype)
        pos, neg = queue_logits(q[0], k1, queue, self.temperature)
        if self.symmetric:
            pos2, neg2 = queue_logits(q[1], k0, queue, self.temperature)
            pos, neg = torch.cat([pos, pos2]), torch.cat([neg, neg2])
        out = self._objective(pos, neg)
        keys = torch.cat([k1, k0]) if self.symmetric else k1
        self.queue.enqueue(D.gather_no_grad(F.normalize(keys.float(), dim=-1)))
        return self._finish(out, first, labels)
