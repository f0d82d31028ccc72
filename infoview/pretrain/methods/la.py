"""Local Aggregation (Zhuang, Zhai, Yamins 2019): pull an image towards its k-means neighbours in a memory bank."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infoview.errors import ConfigError
from infoview.models import EpochVisits, MemoryBank
from infoview.objectives import ObjectiveOutput
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

#: added to P(C | B) before the log, as the authors' code does: a row with no close neighbour in its
#: background reads -log(1e-7) = 16.1 nats, instead of an infinite loss, and gets no gradient (the paper's
#: per-row loss; the authors' code differs there, see LocalAggregation)
EPS = 1e-7
#: elements of the largest (rows x clusters) block k-means holds at a time
KMEANS_BLOCK = 1 << 24


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """(N,) int64 labels of ``iters`` Lloyd iterations of L2 k-means on the rows of ``x`` (N, D).

    Why here and not faiss (the authors' choice): faiss is no dependency of infoview, and the
    clusterings must be bit-identical on every DDP rank and in a resumed run. So: the initial
    centroids are k distinct rows drawn by a generator seeded with ``seed`` (never the global RNG),
    and the centroid sums are one-hot matmuls accumulated in a fixed order, not ``index_add_``,
    whose CUDA atomics sum in a varying order. An empty cluster keeps its centroid (faiss splits
    a large one instead). Runs on ``x``'s device, a block of rows at a time.
    """
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, {n}] for {n} rows, got {k}")
    x = x.float()
    gen = torch.Generator().manual_seed(int(seed))
    centroids = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    block = max(1, KMEANS_BLOCK // k)

    def assign(c: torch.Tensor, sums: torch.Tensor | None = None, counts: torch.Tensor | None = None):
        half_sq = 0.5 * (c * c).sum(1)
        labels = []
        for start in range(0, n, block):
            rows = x[start : start + block]
            lab = (rows @ c.T - half_sq).argmax(1)  # argmin |x - c|^2
            if sums is not None:
                onehot = torch.zeros(rows.shape[0], k, device=x.device, dtype=x.dtype).scatter_(1, lab[:, None], 1.0)
                sums += onehot.T @ rows
                counts += onehot.sum(0)
            labels.append(lab)
        return torch.cat(labels)

    for _ in range(int(iters)):
        sums, counts = torch.zeros(k, dim, device=x.device), torch.zeros(k, device=x.device)
        assign(centroids, sums, counts)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return assign(centroids)


def neighbours(scores: torch.Tensor, cluster_labels: torch.Tensor, indices: torch.Tensor, background_k: int,
               skip: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Background and close neighbours of each row of ``scores`` (B, N): its scores against the bank.

    B_i: the bank rows ranked ``skip`` .. ``background_k`` - 1 by score, most similar first (``skip`` = 0:
    LA's background, the ``background_k`` nearest rows; ``skip`` > 0: the ring variant); C_i: the rows that
    share i's cluster in at least one clustering (``cluster_labels`` (H, N)). Returns the background's
    scores (B, K), their bank rows (B, K) and which of them are close neighbours (B, K) bool.
    """
    top, rows = torch.topk(scores, background_k, dim=1, sorted=True)
    top, rows = top[:, skip:], rows[:, skip:]
    mine = cluster_labels[:, indices.long()]  # (H, B)
    close = (cluster_labels[:, rows] == mine[:, :, None]).any(0)
    return top, rows, close


def la_loss(background: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """mean_i -log( P(C_i & B_i | v_i) / P(B_i | v_i) + EPS ), P(A | v) = sum_{j in A} exp(score_j) / Z (Z cancels):
    the paper's loss, one term per row (a row with no close neighbour: -log EPS, no gradient)."""
    lse_b = torch.logsumexp(background, dim=1)
    lse_c = torch.logsumexp(background.masked_fill(~close, float("-inf")), dim=1)
    return -torch.log(torch.exp(lse_c - lse_b) + EPS).mean()


@register_method("la")
class LocalAggregation(Method):
    """Local Aggregation (Zhuang, Zhai, Yamins 2019, ICCV), with a ring-restricted background as a variant.

    One view of image i gives v_i = normalize(head(encoder(x))); a memory bank holds one row per image
    of the split (momentum ``bank_momentum``, taking each step's embeddings gathered from every rank).
    B_i, the background neighbours: the ``background_k`` bank rows nearest v_i. C_i, the close
    neighbours: the images that share i's cluster in any of ``num_kmeans`` k-means clusterings of the
    bank (``k`` clusters each), recomputed at the start of every epoch from ``kmeans_start_epoch`` on.
    The loss::

        -log( P(C_i & B_i | v_i) / P(B_i | v_i) ),  P(A | v) = sum_{j in A} exp(<v, bank_j> / t) / Z

    The warm-up: before ``kmeans_start_epoch`` (until the first clustering) the loss is instance
    recognition, as the authors warm up LA with 10 epochs of it: each view against its own bank row and
    ``background_k`` rows of other images drawn at random, InfoNCE on those ``background_k`` + 1 scores
    (``mi_estimate`` is what they read). Every view gets a gradient from the first step. Warming up with
    LA's loss and each image its own cluster (C_i = {i}, the authors' initial labels) instead would give
    one only to the views whose own row is among their ``background_k`` nearest: at the start, against
    a random bank of 50,000 rows and 4096 neighbours, about 8% of them.

    ``ring_inner`` > 0 drops the floor(ring_inner * background_k) nearest rows from B_i (and so from
    both sums): the background becomes a band of similarity ranks, as the Ring paper (Wu et al. 2020)
    restricts negatives to a ring.

    This loss is not a mutual-information bound. The ``mi`` this method reports is
    :meth:`Method._certify_bank`: each view against the bank (before it takes the batch), normalised
    over the images the epoch has not visited yet, a certified lower bound on I(view; image index | the
    run so far) for the critic <v, bank_j> / t, whatever the loss (objectives/bank.py says why the
    visited rows are left out). After the warm-up ``mi_estimate`` is NaN: LA's loss reads no MI. LA
    trains with its own loss: ``objective.*`` must stay at its default (InfoNCE, the warm-up's).

    Departures from the authors' code (neuroailab/LocalAggregation-Pytorch):

    - the warm-up is part of the run: the authors train IR for 10 epochs in a run of its own
      (config/imagenet_ir.json), then start LA from its model and bank at epoch 0 of a new schedule;
      their IR loss is NCE against 4096 rows drawn from all N (the own row now and then) with a fixed
      normaliser Z, this one InfoNCE against ``background_k`` rows of other images (as ``method=ir``);
    - a row with no close neighbour in its background: their code divides the (B,) numerators by the
      (B, 1) denominators, a (B, B) broadcast, and averages -log(num_j / den_i + 1e-7) over every pair;
      where every row has a neighbour that is the per-row loss up to the 1e-7, but a row without one
      still gets a gradient, through its denominator in the other rows' terms. We follow the paper's
      per-row loss: such a row reads -log(1e-7) and gets none (tests/pretrain/test_la.py computes both);
    - k-means in torch, not faiss (see :func:`kmeans`); clusterings at each epoch's start, theirs after
      the first step of the run and then at each epoch's last.
    """

    # the paper's ImageNet setting: 4096 background neighbours, 10 clusterings of 10000 clusters
    # (the authors' PyTorch imagenet_la.json: 30000), t 0.07, bank momentum 0.5; faiss's 20 iterations.
    # The authors warm up with 10 epochs of instance discrimination (infoview/configs/la_cifar10.yaml: 10); the
    # default warms up for 1, so that a short run is LA at all
    DEFAULTS = {
        "temperature": Key(0.07, "the embeddings' dot products with the bank are divided by it", above=0),
        "background_k": Key(4096, "background neighbours: the bank rows nearest each embedding", min=1),
        "num_kmeans": Key(10, "k-means clusterings of the bank whose clusters are unioned into C_i", min=1),
        "k": Key(10000, "clusters of each k-means clustering", min=1),
        "kmeans_iters": Key(20, "Lloyd iterations of each clustering", min=1),
        "kmeans_start_epoch": Key(1, "the first epoch that clusters the bank; the ones before warm up with IR "
                                     "(0: none)", min=0),
        "bank_momentum": Key(0.5, "the memory bank's momentum", min=0, max=1),
        "ring_inner": Key(0.0, "ring variant: drop this fraction of the nearest background rows", min=0, below=1),
    }
    num_views = 1
    # the same on every rank by construction (the bank's gathered updates, a deterministic k-means): DDP need not
    # broadcast them from rank 0 every step (the bank itself is left out by Method)
    same_on_every_rank = ("cluster_labels", "cluster_epoch")
    needs_indices = True
    demo = ("infoview pretrain --config demo method=la out_dir=runs/demo_la augment.num_views=1 objective.name=infonce "
            "la.background_k=1024 la.k=100")

    @classmethod
    def needs(cls, cfg, num_samples: int) -> list[str]:
        found = []
        extra = {k: v for k, v in cfg.objective.items() if k != "name"}
        if cfg.objective.name != "infonce" or extra:
            got = f"objective.name={cfg.objective.name}" + "".join(f", objective.{k}={v}" for k, v in extra.items())
            found.append(f"objective.name=infonce and no other objective.* key (it trains with its own loss; got {got})")
        for key, value in (("background_k", cfg.la.background_k), ("k", cfg.la.k)):
            if num_samples >= 2 and not 1 <= int(value) <= num_samples:
                found.append(f"la.{key}={at_most(num_samples)} or fewer (at most the split's {num_samples:,} images; "
                             f"got {value})")
        return found

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "LocalAggregation":
        extra = {k: v for k, v in cfg.objective.items() if k != "name"}
        if cfg.objective.name != "infonce" or extra:
            got = f"objective.name={cfg.objective.name}" + "".join(f", objective.{k}={v}" for k, v in extra.items())
            raise ConfigError(f"method=la trains with its own loss: leave objective.* at its default "
                              f"(objective.name=infonce, no other keys), got {got}")
        c = cfg.la
        return cls(
            encoder, projector_from_config(cfg.model, encoder.feature_dim), objective, num_classes, num_samples,
            temperature=method_temperature(cfg), background_k=c.background_k, num_kmeans=c.num_kmeans, k=c.k,
            kmeans_iters=c.kmeans_iters, kmeans_start_epoch=c.kmeans_start_epoch, bank_momentum=c.bank_momentum,
            ring_inner=c.ring_inner, seed=cfg.train.seed,
        )

    def __init__(self, encoder, projector, objective, num_classes: int = 0, num_samples: int = 0,
                 temperature: float = 0.07, background_k: int = 4096, num_kmeans: int = 10, k: int = 10000,
                 kmeans_iters: int = 20, kmeans_start_epoch: int = 1, bank_momentum: float = 0.5,
                 ring_inner: float = 0.0, seed: int = 0):
        super().__init__(encoder, projector, objective, num_classes)
        n = int(num_samples)
        if n < 2:
            raise ConfigError(f"method=la keeps a memory bank of the training split's images: it needs at least 2, "
                              f"got {n}")
        for key, value in (("background_k", background_k), ("k", k)):
            if not 1 <= int(value) <= n:
                raise ConfigError(f"la.{key}={value} must be at most the training split's {n} images: lower it")
        self.temperature = float(temperature)
        self.background_k, self.num_kmeans, self.k = int(background_k), int(num_kmeans), int(k)
        self.kmeans_iters, self.kmeans_start_epoch = int(kmeans_iters), int(kmeans_start_epoch)
        self.skip = math.floor(round(float(ring_inner) * self.background_k, 9))
        if not 0 <= self.skip < self.background_k:
            raise ConfigError(f"la.ring_inner={ring_inner} must leave some of la.background_k={background_k} rows: "
                              "use a value in [0, 1)")
        self.seed = int(seed)
        self.bank = MemoryBank(n, projector.out_dim, momentum=bank_momentum, seed=seed)
        self.visits = EpochVisits(n)  # the images this epoch has visited: the bound's normaliser leaves them out
        # each image its own cluster until the first clustering (the authors' initial labels); int32: 10 x 1.28M
        # labels on ImageNet are 51 MB, not 102
        self.register_buffer("cluster_labels", torch.arange(n, dtype=torch.int32).repeat(self.num_kmeans, 1))
        self.register_buffer("cluster_epoch", torch.tensor(-1, dtype=torch.long))  # the epoch they were made at

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        super().set_progress(step, total_steps, epoch)
        e = math.floor(round(float(epoch), 9))
        if e >= self.kmeans_start_epoch and e != int(self.cluster_epoch):
            self.recluster(e)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        """``num_kmeans`` clusterings of the bank as it is now, each seeded by (train.seed, its number)."""
        for h in range(self.num_kmeans):
            seed = (self.seed * 1_000_003 + 1234 + h) % 2**62  # 1234 + h: the authors' seeds
            self.cluster_labels[h] = kmeans(self.bank.bank, self.k, self.kmeans_iters, seed).to(torch.int32)
        self.cluster_epoch.fill_(int(epoch))

    @property
    def warming_up(self) -> bool:
        """Until the first clustering (``kmeans_start_epoch``) the loss is instance recognition's."""
        return int(self.cluster_epoch) < 0

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None,
                indices: torch.Tensor | None = None) -> StepOutput:
        if len(views) != 1:
            raise ValueError(f"la takes 1 view, got {len(views)}")
        if indices is None:
            raise ValueError("la keys its memory bank by image index: forward(views, labels, indices)")
        first, z = self.embed(views)
        indices = indices.to(self.bank.bank.device).long()
        everyone = D.gather_no_grad(indices)  # the global batch's images, in rank order
        bank = self.bank.bank.detach().clone()  # the update below must not touch what backward reads
        with torch.autocast(z.device.type, enabled=False):
            v = F.normalize(z[0].float(), dim=1)
            scores = v @ bank.T / self.temperature
            if self.warming_up:  # instance recognition: the own row against background_k drawn rows
                pos = scores.gather(1, indices[:, None])[:, 0]
                out = self._objective(pos, self._drawn_negatives(scores, indices, everyone, self.background_k))
            else:
                top, _, close = neighbours(scores, self.cluster_labels, indices, self.background_k, self.skip)
                loss = la_loss(top, close)
                nan = loss.detach().new_full((), float("nan"))
                out = ObjectiveOutput(loss=loss, mi=nan, ceiling=float("nan"), log_m=float("nan"), estimate=nan)
            cert = self._certify_bank(scores, indices, everyone)  # before the bank takes this batch
        self.bank.update(everyone, D.gather_no_grad(v.detach()))
        return self._finish(out, cert, first, labels)
