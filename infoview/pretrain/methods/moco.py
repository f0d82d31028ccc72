"""MoCo: queries from the encoder, keys from its momentum copy, negatives from a queue of past keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError
from infoview.models import MomentumEncoder, NegativeQueue, momentum_at
from infoview.models.split_bn import convert_split_bn
from infoview.objectives import queue_logits
from infoview.pretrain.methods.base import (
    Method,
    StepOutput,
    method_temperature,
    predictor_from_config,
    projector_from_config,
    register_method,
)
from infoview.schema import Key
from infoview.training import distributed as D

MOCO_BN = ("auto", "shuffle", "split", "sync", "none")


@register_method("moco")
class MoCo(Method):
    """Momentum contrast (He et al. 2020; MoCo v2, Chen et al. 2020) with any objective."""

    # MoCo v2's: momentum 0.999 constant (momentum_final null), one query view; bn=auto is shuffle under
    # DDP and split BatchNorm on one process
    DEFAULTS = {
        "temperature": Key(0.2, "the cosine similarities of queries and keys are divided by it", above=0),
        "queue_size": Key(65536, "keys in the queue of negatives", min=1),
        "momentum": Key(0.999, "the key encoder's EMA momentum (at the start)", min=0, max=1),
        "momentum_final": Key(None, "null: a constant momentum; a number: cosine up to it (BYOL)",
                              min=0, max=1, nullable=True),
        "bn": Key("auto", "auto: shuffle under DDP, split on one process", choices=MOCO_BN),
        # unbounded: it must be >= 2 only under moco.bn=split (checked there with the batch it splits)
        "bn_splits": Key(8, "BatchNorm groups of moco.bn=split"),
        "symmetric": Key(False, "add the swapped pair (the second view as the query), as MoCo v3 does"),
        # model.pred_hidden until issue 25: a key of one method lives in its section
        "pred_hidden": Key(0, "hidden width of a predictor on the queries; 0 = none", min=0),
    }
    num_views = 2
    demo = "infoview pretrain --config demo method=moco out_dir=runs/demo_moco moco.queue_size=1024"

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "MoCo":
        mc = cfg.moco
        proj = projector_from_config(cfg.model, encoder.feature_dim)
        return cls(
            encoder, proj, objective, num_classes, temperature=method_temperature(cfg), queue_size=mc.queue_size,
            momentum=mc.momentum, momentum_final=mc.momentum_final, bn=mc.bn, bn_splits=mc.bn_splits,
            symmetric=mc.symmetric, predictor=predictor_from_config(mc.pred_hidden, proj.out_dim), seed=cfg.train.seed,
        )

    @property
    def sync_bn(self) -> bool:  # moco.bn=sync: SyncBatchNorm under DDP
        return self.bn == "sync"

    def check_run(self, local_batch: int, world: int) -> None:
        splits = self.bn_splits if self.bn == "split" else 0
        if splits and (local_batch % splits or local_batch // splits < 2):
            raise ConfigError(
                f"moco.bn=split splits each process's batch of {local_batch} into moco.bn_splits={splits} "
                f"BatchNorm groups; make data.batch_size per process a multiple of {splits} (at least {2 * splits}) "
                "or change moco.bn_splits"
            )

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
