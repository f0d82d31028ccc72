"""CMC: the L channel of an image against its ab channels, one encoder each (Tian, Krishnan, Isola 2019).

Contrastive Multiview Coding on the Lab split of the colour space, as Wu et
al. 2020 ("On Mutual Information in Contrastive Learning for Visual
Representations") train it with their objectives. Each image gets one
augmented view (``augment.num_views=1``; CMC's recipe is a random resized
crop of 0.2-1 of the area and a flip, no colour jitter: ``augment.recipe=mocov2``
with ``jitter.p``, ``grayscale.p`` and ``blur.p`` overridden to 0 does that,
infoview/configs/cmc_infonce_cifar10.yaml). The encoder is ``model.streams=lab``
(infoview.models.lab): it converts the view to CIELab and runs one copy of
``model.arch`` on L (1 channel) and one on ab (2 channels); each half has its
own head (``model.proj_*``, CMC's is one Linear to 128) and its embedding is
L2-normalised. Each image gives two kinds of rows, an L embedding as the
anchor and an ab one, each scored against the other half:

- ``cmc.negatives=bank`` (CMC's): two memory banks (infoview.models.MemoryBank)
  of one row per training image, one per half. An L row's positive is the ab
  bank's row of its image and its ``num_negatives`` negatives are ab bank rows
  of other images, drawn uniformly (with replacement); an ab row is scored
  against the L bank alike. Bank rows are detached: each half learns from its
  own rows. After the step both banks move to the batch's embeddings,
  gathered from every rank, with ``bank_momentum`` (0.5). The draws come from
  a generator seeded by ``train.seed`` and the step, for the global batch, and
  each rank takes its rows: a two-rank run draws what one process draws.
- ``cmc.negatives=batch``: L's embedding of an image against ab's of the same
  image (the positive) and of the other images of the global batch, and ab's
  against L's alike (SimCLR's rows, across the two halves only), gathered from
  every rank with gradients.

Any registered objective scores these rows (pooled ones, ML-CPC, over the
global batch under DDP). Temperature 0.07 as in CMC.

``mi``: the objective's bound on the cross-view matrix of the global batch, L
embeddings (rows) against ab embeddings (columns), ``Method._certify``: a
lower bound on I(L view; ab view) of the critic the method trains, with m =
the global batch (ceiling that of the objective at that m, log m for
InfoNCE). What the training rows read is ``mi_estimate``, not a bound (bank
rows are embeddings made by older encoders).

Departures from the authors' code (HobbitLong/CMC, train_CMC.py and
NCE/NCEAverage.py): CMC draws negatives among all images (its own included)
and sums the two rows' losses; here negatives exclude the image itself and
the loss is the mean over both rows. Its NCE loss (the default there) is not
an MI bound; any registered objective is used instead (InfoNCE is CMC's
``--softmax``). Its bank starts from uniform noise, here from random unit
rows. (A positive taken from the current ab embedding instead of the bank
would let both halves agree on one constant vector against the random
initial bank: the loss falls while the certified ``mi`` stays at 0.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from infoview.augment.recipes import resolve
from infoview.errors import ConfigError
from infoview.models import MemoryBank
from infoview.pretrain.methods.base import (
    Method,
    StepOutput,
    method_temperature,
    projector_from_config,
    register_method,
)
from infoview.schema import Key
from infoview.training import distributed as D

CMC_NEGATIVES = ("bank", "batch")


@register_method("cmc")
class CMC(Method):
    """L against ab of each image, negatives from the other half's memory bank or the global batch."""

    # CMC's (train_CMC.py): t 0.07 (--nce_t), K 16384 (--nce_k), bank momentum 0.5 (--nce_m)
    DEFAULTS = {
        "temperature": Key(0.07, "the cosine similarities of L and ab embeddings are divided by it", above=0),
        "negatives": Key("bank", "bank: the other half's memory bank; batch: the global batch's other images",
                         choices=CMC_NEGATIVES),
        "num_negatives": Key(16384, "negatives per row drawn from the other half's bank (cmc.negatives=bank)", min=1),
        "bank_momentum": Key(0.5, "a bank row keeps this much of itself at each update", min=0, max=1),
    }
    num_views = 1
    needs_indices = True
    demo = ("infoview pretrain --config demo method=cmc out_dir=runs/demo_cmc augment.num_views=1 model.streams=lab "
            "augment.overrides.grayscale.p=0")

    @classmethod
    def needs(cls, cfg, num_samples: int) -> list[str]:
        found = []
        if cfg.model.streams != "lab":
            found.append("model.streams=lab (it contrasts the L and ab halves of the encoder)")
        a = cfg.augment
        specs = resolve(a.recipe, int(a.size), int(a.num_views), overrides=OmegaConf.to_container(a.overrides) or None)
        grey = max(float(s.ops["grayscale"]["p"]) for s in specs)
        if grey > 0:
            found.append(f"augment.overrides.grayscale.p=0 (a grey view has no ab to contrast with L; got {grey})")
        return found

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "CMC":
        if getattr(encoder, "streams", "rgb") != "lab":
            raise ConfigError("method=cmc contrasts the L and ab halves of the encoder: set model.streams=lab")
        a = cfg.augment
        specs = resolve(a.recipe, int(a.size), int(a.num_views), overrides=OmegaConf.to_container(a.overrides) or None)
        grey = max(float(s.ops["grayscale"]["p"]) for s in specs)
        if grey > 0:
            raise ConfigError(f"augment grayscale.p={grey} leaves views without ab for method=cmc to contrast with L: "
                              "set augment.overrides.grayscale.p=0")
        c = cfg.cmc
        widths = (encoder.backbone.l_features, encoder.backbone.ab_features)
        heads = [projector_from_config(cfg.model, d) for d in widths]
        return cls(encoder, heads[0], heads[1], objective, num_classes, temperature=method_temperature(cfg),
                   negatives=c.negatives, num_negatives=c.num_negatives, bank_momentum=c.bank_momentum,
                   num_samples=num_samples, seed=cfg.train.seed)

    def __init__(self, encoder, projector, projector_ab, objective, num_classes: int = 0, temperature: float = 0.07,
                 negatives: str = "bank", num_negatives: int = 16384, bank_momentum: float = 0.5,
                 num_samples: int = 0, seed: int = 0):
        super().__init__(encoder, projector, objective, num_classes)
        self.projector_ab = projector_ab  # self.projector is L's head
        self.temperature = float(temperature)
        if negatives not in CMC_NEGATIVES:
            raise ConfigError(f"cmc.negatives must be one of {', '.join(CMC_NEGATIVES)}, got {negatives!r}")
        self.negatives = negatives
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        self.step = 0
        if negatives == "bank":
            if num_samples < 2:
                raise ConfigError(f"cmc.negatives=bank draws negatives among the split's other images, and it has "
                                  f"{num_samples}: use a split of 2 or more images, or cmc.negatives=batch")
            dim = projector.out_dim
            self.bank_l = MemoryBank(num_samples, dim, momentum=bank_momentum, seed=self.seed)
            self.bank_ab = MemoryBank(num_samples, dim, momentum=bank_momentum, seed=self.seed + 1)

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        super().set_progress(step, total_steps, epoch)
        self.step = int(step)  # seeds the bank draws: a resumed run draws what the uninterrupted one did

    def check_run(self, local_batch: int, world: int) -> None:
        if self.negatives == "batch" and local_batch * world < 2:
            raise ConfigError("cmc.negatives=batch needs a global data.batch_size of at least 2")

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None,
                indices: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 1:
            raise ValueError(f"cmc takes 1 view per image, got {len(views)}")
        f_l, f_ab = self.encoder.backbone.split_features(views[0])
        with torch.autocast(views[0].device.type, enabled=False):
            z_l = F.normalize(self.projector(f_l).float(), dim=1)
            z_ab = F.normalize(self.projector_ab(f_ab).float(), dim=1)
            if self.negatives == "bank":
                if indices is None:
                    raise ValueError("cmc.negatives=bank needs each image's index in the split (forward's indices)")
                all_idx = D.gather_no_grad(indices.to(z_l.device).long())
                pos, neg = self._bank_rows(z_l, z_ab, all_idx)
                all_l, all_ab = D.gather_no_grad(z_l.detach()), D.gather_no_grad(z_ab.detach())
            else:
                all_l, all_ab = D.gather_with_grad(z_l), D.gather_with_grad(z_ab)
                pos = (z_l * z_ab).sum(1) / self.temperature
                neg_l, neg_ab = self._batch_negatives(z_l, all_ab), self._batch_negatives(z_ab, all_l)
                pos, neg = torch.cat([pos, pos]), torch.cat([neg_l, neg_ab])
            out = self._objective(pos, neg)
        cert = self._certify(all_l.detach(), all_ab.detach())
        if self.negatives == "bank":  # after scoring, as CMC: this batch's rows are not its own negatives' past
            self.bank_l.update(all_idx, all_l)
            self.bank_ab.update(all_idx, all_ab)
        return self._finish(out, cert, torch.cat([f_l, f_ab], dim=1), labels)

    def _batch_negatives(self, q: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """(B, B_total - 1): this rank's rows against the other images of the global batch."""
        b, total = q.shape[0], cands.shape[0]
        offset = D.row_offset(b)
        scores = q @ cands.t() / self.temperature
        others = torch.ones_like(scores, dtype=torch.bool)
        others[torch.arange(b, device=q.device), torch.arange(b, device=q.device) + offset] = False
        return scores[others].view(b, total - 1)

    def _bank_rows(self, z_l: torch.Tensor, z_ab: torch.Tensor, all_idx: torch.Tensor):
        """``(pos (2B,), neg (2B, K))``: L rows against the ab bank, then ab rows against the L bank. A row's
        positive is the other bank's row of its own image, its negatives K rows of other images, this rank's
        rows of the draws made for the global batch (the same on every rank, from the seed and the step)."""
        gen = torch.Generator(device=self.bank_l.bank.device)
        gen.manual_seed(self.seed * 1_000_003 + self.step)
        b = z_l.shape[0]
        start = D.row_offset(b)
        mine = slice(start, start + b)
        own = all_idx[mine, None]
        scores = []
        for q, bank in ((z_l, self.bank_ab), (z_ab, self.bank_l)):
            draws = bank.sample(all_idx, self.num_negatives, generator=gen)[mine]
            scores.append(self._bank_scores(q, bank.bank, torch.cat([own, draws], dim=1)))
        scores = torch.cat(scores)
        return scores[:, 0], scores[:, 1:]

    def _bank_scores(self, q: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """<q_i, bank[rows_ij]> / t: one (B, N) product when the bank has fewer rows than the B K D gather reads."""
        bank = bank.detach()
        if bank.shape[0] <= rows.shape[1] * q.shape[1]:  # a copy: the update after this step writes the bank
            return (q @ bank.clone().t()).gather(1, rows) / self.temperature
        return torch.einsum("bd,bkd->bk", q, bank[rows]) / self.temperature
