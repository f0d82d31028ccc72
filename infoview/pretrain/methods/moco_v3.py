"""MoCo v3: queries with a predictor against the momentum keys of the global batch, both ways, no queue."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError
from infoview.models import MLP, MomentumEncoder, momentum_at
from infoview.pretrain.methods.base import (
    Method,
    StepOutput,
    method_temperature,
    projector_from_config,
    register_method,
)
from infoview.schema import Key
from infoview.training import distributed as D
from infoview.utils.device import resolve_device

FREEZE_CHOICES = (None, True, False)  # null: true for an encoder with a patch_embed (a ViT)


def patch_embed_of(encoder: nn.Module) -> nn.Module | None:
    """The patch projection of a ViT encoder (``encoder.backbone.patch_embed``), None for a model without one."""
    return getattr(getattr(encoder, "backbone", encoder), "patch_embed", None)


def key_logits(q: torch.Tensor, keys: torch.Tensor, offset: int, temperature: float):
    """Rows of the queries ``q`` (B, D) against every key of the global batch ``keys`` (B_total, D).

    Query i's positive is the key of its own image, column ``offset + i``; its
    negatives are the keys of the B_total - 1 other images. Returns ``(pos (B,),
    neg (B, B_total))``, neg being the score rows with the positive's column
    set to -inf (not a negative): call the objective as ``objective(pos, neg,
    B_total - 1)``. Cosine similarities / temperature, in float32 (float64
    stays) with autocast off; the keys carry no gradient.
    """
    if q.dim() != 2 or keys.dim() != 2 or q.shape[1] != keys.shape[1] or keys.shape[0] < offset + q.shape[0]:
        raise ValueError(f"q (B, D) must fit into keys (B_total, D) at row {offset}, got {tuple(q.shape)} "
                         f"and {tuple(keys.shape)}")
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q if q.dtype == torch.float64 else q.float(), dim=-1)
        k = F.normalize(keys.detach().to(q.dtype), dim=-1)
        scores = q @ k.t() / temperature
    rows = torch.arange(q.shape[0], device=q.device)
    own = torch.zeros_like(scores, dtype=torch.bool)
    own[rows, rows + offset] = True
    return scores[rows, rows + offset], scores.masked_fill(own, float("-inf"))


@register_method("moco_v3")
class MoCoV3(Method):
    """MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

    Both views go through the online branch, encoder -> projector
    (``model.proj_*``) -> predictor (``moco_v3.pred_*``), one view at a time
    as the reference does (BatchNorm sees one view's batch), and through the
    key encoder, an EMA copy of encoder -> projector (no predictor) whose
    momentum rises from ``moco_v3.momentum`` to ``moco_v3.momentum_final`` on a
    half cosine over the run. There is no queue: query i's candidates are the
    keys of every image of the global batch (gathered without gradients from
    every rank), its positive the key of its own image. The loss is
    symmetric: the rows of q1 against the keys of view 2 and of q2 against the
    keys of view 1 go to the objective together (any registered objective;
    a pooled one, ML-CPC, through ``Method._objective``). With
    ``moco_v3.scale_loss`` the objective's loss (a mean over both
    directions' rows) is multiplied by 4 x temperature, which gives the
    gradient of the reference's ``CE * 2T`` per direction, summed (InfoNCE's
    loss here is the cross-entropy less log m, a constant); ``loss`` in
    metrics.csv is that scaled value.

    Defaults: momentum 0.99 -> 1 on a cosine and a 2-layer predictor 4096
    wide, as the reference code's ``--moco-m-cos``; temperature 0.2, its ViT
    value (its ResNet default is 1.0; 0.2 is also this package's other
    methods' value); BatchNorm becomes SyncBatchNorm under DDP on GPUs, as
    the reference does for every model (torch's SyncBatchNorm runs on GPUs
    only: on CPUs each process's BatchNorm sees its own share of the batch). ``moco_v3.freeze_patch_embed`` keeps a
    ViT's random patch projection fixed (the reference's
    ``--stop-grad-conv1``): its parameters get ``requires_grad=False``, so
    the optimiser neither updates nor decays them (when the encoder
    has a ``patch_embed``, null, the default).

    ``mi``: the objective's bound on the cross-view matrix of the global
    batch, each first-view query q(x1_i) (after the predictor) against the
    keys k(x2_j) of every second view. It lower-bounds the MI between the
    two views of an image, I(x1; x2), for the critic
    f(x1, x2) = cos(q(x1), k(x2)) / temperature, whose key encoder is the
    one of this very step: after its EMA update with the step's scheduled
    momentum m_t (``models.momentum_at(step, total_steps, momentum,
    momentum_final)``). All n = global batch candidates come from that one
    encoder, so the matrix is the layout the bound is proven on (unlike
    MoCo v2's queue of older keys); m_t only changes which critic is
    certified, not the validity. The swapped direction certifies the same
    quantity and is not added. As for every method, BatchNorm in training
    mode makes the critic depend on the batch, which the bound does not
    cover.
    """

    DEFAULTS = {
        "temperature": Key(0.2, "the cosine similarities of queries and keys are divided by it (ResNet ref.: 1.0)",
                           above=0),
        "momentum": Key(0.99, "the key encoder's EMA momentum at the start", min=0, max=1),
        "momentum_final": Key(1.0, "the momentum at the end, on a half cosine (= momentum: constant)", min=0, max=1),
        "pred_hidden": Key(4096, "hidden width of the predictor on the queries; 0 = no predictor", min=0),
        "pred_layers": Key(2, "Linear layers of the predictor", min=1),
        "pred_last_bn": Key(False, "BatchNorm (no affine) after the predictor's last Linear (reference ViT: true)"),
        "scale_loss": Key(True, "multiply the loss by 4 x temperature (2T per direction, summed), as the reference"),
        "freeze_patch_embed": Key(None, "keep a ViT's random patch projection untrained; null: if it has one",
                                  choices=FREEZE_CHOICES),
    }
    num_views = 2
    demo = "infoview pretrain --config demo method=moco_v3 out_dir=runs/demo_moco_v3"

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "MoCoV3":
        mc = cfg.moco_v3
        proj = projector_from_config(cfg.model, encoder.feature_dim)
        pred = None
        if mc.pred_hidden:
            pred = MLP(proj.out_dim, int(mc.pred_hidden), proj.out_dim, int(mc.pred_layers), bn=True,
                       last_bn=bool(mc.pred_last_bn))
        return cls(
            encoder, proj, objective, num_classes, temperature=method_temperature(cfg), momentum=mc.momentum,
            momentum_final=mc.momentum_final, predictor=pred, scale_loss=mc.scale_loss,
            freeze_patch_embed=mc.freeze_patch_embed, arch=cfg.model.arch,
            sync_bn=resolve_device(cfg.train.device).type == "cuda",  # torch's SyncBatchNorm runs on GPUs only
        )

    def __init__(
        self, encoder, projector, objective, num_classes: int = 0, temperature: float = 0.2, momentum: float = 0.99,
        momentum_final: float = 1.0, predictor: nn.Module | None = None, scale_loss: bool = True,
        freeze_patch_embed: bool | None = None, arch: str = "", sync_bn: bool = True,
    ):
        super().__init__(encoder, projector, objective, num_classes)
        self.sync_bn = bool(sync_bn)  # the reference converts every BatchNorm to SyncBatchNorm under DDP
        self.temperature = float(temperature)
        self.predictor = predictor
        self.scale_loss = bool(scale_loss)
        self.base_momentum, self.final_momentum = float(momentum), float(momentum_final)
        if not 0.0 <= self.base_momentum <= self.final_momentum <= 1.0:
            raise ConfigError(f"moco_v3.momentum_final={momentum_final} must be in [moco_v3.momentum, 1] = "
                              f"[{momentum}, 1]: the momentum rises to it")
        self.momentum = self.base_momentum
        self.frozen = self._freeze_patch_embed(freeze_patch_embed, arch or getattr(encoder, "arch", "this encoder"))
        # made after the freeze: the key encoder's copy of the patch projection is the same fixed one
        self.key = MomentumEncoder(nn.Sequential(encoder, projector))
        self.key.train()

    def _freeze_patch_embed(self, freeze: bool | None, arch: str) -> bool:
        if not (freeze is None or isinstance(freeze, bool)):
            raise ConfigError(f"moco_v3.freeze_patch_embed must be true, false or null (if it has one), got {freeze!r}")
        patch = patch_embed_of(self.encoder)
        if freeze is True and patch is None:
            raise ConfigError(f"moco_v3.freeze_patch_embed=true freezes a ViT's patch projection and model.arch="
                              f"{arch} has no patch_embed: set moco_v3.freeze_patch_embed to null or false")
        if freeze is False or patch is None:
            return False
        for p in patch.parameters():
            p.requires_grad_(False)
        return True

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        super().set_progress(step, total_steps, epoch)
        self.momentum = momentum_at(step, total_steps, self.base_momentum, self.final_momentum)

    def _query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the query (after the projector and the predictor) of one view."""
        f = self.encoder(x)
        q = self.projector(f)
        return f, (self.predictor(q) if self.predictor is not None else q)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 2 or views[0].shape != views[1].shape:
            raise ValueError(f"moco_v3 takes 2 views of one size, got {[tuple(v.shape) for v in views]}")
        first, q1 = self._query(views[0])
        _, q2 = self._query(views[1])
        with torch.no_grad():
            self.key.update(nn.Sequential(self.encoder, self.projector), self.momentum)
            k1, k2 = (D.gather_no_grad(self.key(x)) for x in views)  # (B_total, D): the global batch's keys
        b = q1.shape[0]
        offset = D.row_offset(b)
        pos1, neg1 = key_logits(q1, k2, offset, self.temperature)
        pos2, neg2 = key_logits(q2, k1, offset, self.temperature)
        out = self._objective(torch.cat([pos1, pos2]), torch.cat([neg1, neg2]), k2.shape[0] - 1)
        if self.scale_loss:
            out = dataclasses.replace(out, loss=out.loss * (4.0 * self.temperature))
        cert = self._certify(D.gather_no_grad(q1.detach()), k2)
        return self._finish(out, cert, first, labels)
