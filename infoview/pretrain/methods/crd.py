"""CRD: a student encoder learns to identify a frozen teacher's embedding of the same image, with any objective."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from infoview.augment.recipes import normalization
from infoview.errors import ConfigError, InfoviewError
from infoview.models import MemoryBank
from infoview.objectives import bank_logits
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


class ClassPools:
    """Draws, for each image, negatives among the images of *other* classes (CRD's ``CIFAR100InstanceSample``,
    mode ``exact``): the split's indices sorted by class, so that the images of all classes but c are the
    sorted order less one contiguous block."""

    def __init__(self, labels: torch.Tensor):
        labels = labels.long()
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        self.count = counts
        self.start = torch.cumsum(counts, 0) - counts

    def to(self, device) -> "ClassPools":
        for name in ("labels", "order", "count", "start"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def sample(self, indices: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) indices drawn uniformly, with replacement, from the images whose class is not that of
        ``indices`` (the same random stream on every rank, as ``MemoryBank.sample``)."""
        c = self.labels[indices]
        pool = len(self.labels) - self.count[c]  # (B,) images of the other classes
        u = (torch.rand(len(indices), k, device=self.order.device, dtype=torch.float64) * pool[:, None]).long()
        u = torch.minimum(u, pool[:, None] - 1)  # rand < 1, but float rounding must not reach the pool's end
        u = u + (u >= self.start[c][:, None]).long() * self.count[c][:, None]  # skip class c's block
        return self.order[u]


@register_method("crd")
class CRD(Method):
    r"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020), with any objective.

    The teacher (``crd.teacher``: any ``backbone=`` spec the evaluators take: a pretraining run or
    checkpoint, an export, ``random:<timm arch>``) is frozen: no gradient, always in eval mode, its
    weights never change. Each image gets one view; the student encodes it, the teacher encodes the same
    pixels (normalised as the teacher was trained). A linear head on each side maps the features to
    ``crd.dim`` (128) and L2-normalises them (the student's is ``model.proj_*``, which
    ``infoview distill`` sets to one Linear layer; the teacher's is this method's and trains too).

    Two memory banks of ``crd.dim`` rows, one per image of the split (image indices from the loader):
    the teachers' and the students' embeddings, updated with momentum ``crd.bank_momentum`` (0.5) from
    the batch gathered from every rank. The objective is applied twice and the two losses are summed,
    as CRD does: the student's embedding of image i against the teacher bank (positive: row i; negatives:
    ``crd.num_negatives`` rows of other images, 16384 as CRD), and the teacher's embedding against the
    student bank; the same draws index both banks. Scores are divided by ``crd.temperature`` (0.07).
    ``objective.name=infonce`` is CRD with InfoNCE's softmax in place of its NCE loss; ``ml_cpc`` is what
    the ML-CPC paper puts in its place.

    Without labels (``crd.ce_weight`` = 0, self-supervised compression) the negatives are drawn uniformly
    from the other images, and the loss is the two objectives' sum (``crd.weight`` 1). With labels
    (``crd.ce_weight`` > 0), as the authors train (HobbitLong/RepDistiller and jiamings/ml-cpc,
    train_student.py with ``--distill crd``): the negatives come from the images of *other classes* only
    (their ``CIFAR100InstanceSample``, mode ``exact``, the default), and the loss is
    ``crd.ce_weight`` x the cross-entropy of a classifier on the student's features (the online probe's
    head, trained through the encoder; their ``-r``, 1) + ``crd.weight`` x the CRD loss (their ``-b``,
    0.8: ``crd.weight=null`` picks it). Every image of the split must then have a label.

    What ``.mi`` bounds: the objective's bound on the cross-view matrix of the global batch, each
    student embedding against every teacher embedding of the batch (fresh, not the bank's):
    I(student embedding; teacher embedding) with m = the global batch, against its ceiling. The bank
    rows' value is ``mi_estimate``.

    Departures from the authors' code: their training loops pass the negatives' indices in with each
    image (``contrast_idx``), so the alias sampler of their ``ContrastMemory`` draws none; their K
    negatives of an image are distinct (``np.random.choice`` without replacement among the 49,500 images
    of the other classes of CIFAR-100), ours are drawn with replacement (at K = 16384 about 15% repeat an
    image drawn for that row); without labels they have no counterpart. The objective is InfoNCE's softmax
    (or any registered one) rather than NCE with a normalising constant fixed at the first batch. No KD
    term (their ``-a``): an infoview teacher is an encoder without a classifier, so this is their "CRD"
    row, not "CRD+KD". The student's head is ``model.proj_*`` (one Linear by default).
    """

    DEFAULTS = {
        "teacher": Key("", "the frozen teacher: a run, checkpoint, export or random:<timm arch> (backbone= spec)"),
        "temperature": Key(0.07, "the scores are divided by it", above=0),
        "dim": Key(128, "width of the embedding both heads map to", min=1),
        "num_negatives": Key(16384, "bank rows of other images (other classes, with labels) per embedding",
                             min=1),
        "bank_momentum": Key(0.5, "a bank row's momentum when the batch updates it", min=0, max=1),
        "ce_weight": Key(0.0, "weight of the student's cross-entropy on labels (0: none, self-supervised)", min=0),
        "weight": Key(None, "the CRD loss's weight; null: 0.8 with labels (ce_weight > 0, CRD's -b), else 1",
                      min=0, nullable=True),
    }
    num_views = 1
    needs_indices = True
    demo = "infoview distill --config distill_digits teacher=runs/demo out_dir=runs/demo_crd  (after make demo)"

    @classmethod
    def needs(cls, cfg, num_samples: int) -> list[str]:
        k = cfg.crd.num_negatives
        if num_samples >= 2 and k >= num_samples:
            return [f"crd.num_negatives={at_most(num_samples - 1)} or fewer (drawn from the split's {num_samples - 1:,} "
                    f"other images; got {k})"]
        return []

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "CRD":
        from infoview.backbones.spec import load_backbone_spec

        c = cfg.crd
        if not str(c.teacher).strip():
            raise ConfigError("crd.teacher (teacher=) is not set: give a pretraining run, checkpoint, export "
                              "folder or random:<timm arch>")
        if c.weight is not None and c.weight == 0 and c.ce_weight == 0:
            raise ConfigError("crd.weight=0 and crd.ce_weight=0 train nothing: give one of them a weight")
        try:
            teacher = load_backbone_spec(str(c.teacher), seed=int(cfg.train.seed))
        except InfoviewError as exc:
            raise ConfigError(f"teacher={c.teacher}: {exc}") from None
        spec = str(c.teacher)
        fixed_size = not (spec.startswith("random:") and not Path(spec[len("random:"):]).exists())
        size = int(cfg.augment.size)
        if fixed_size and teacher.size != size:
            raise ConfigError(f"the teacher {spec} takes {teacher.size} px images and augment.size={size}: "
                              f"set augment.size={teacher.size}")
        if cfg.model.proj_dim != c.dim:
            raise ConfigError(f"model.proj_dim={cfg.model.proj_dim} is the student's embedding and crd.dim={c.dim} "
                              f"the teacher's: set both to one width")
        if c.ce_weight > 0 and num_classes <= 0:
            raise ConfigError(f"crd.ce_weight={c.ce_weight} trains a classifier on labels: it needs a labelled "
                              "data.source and monitor.probe=true (the classifier is the probe's head)")
        if num_samples < 2 or c.num_negatives >= num_samples:
            raise ConfigError(f"crd.num_negatives={c.num_negatives} draws from the other images of the split, "
                              f"which has {num_samples}: set it below {num_samples}")
        proj = projector_from_config(cfg.model, encoder.feature_dim)
        return cls(encoder, proj, objective, num_classes, teacher=teacher.encoder,
                   renorm=(cfg.augment.normalize, teacher.normalize), num_samples=num_samples,
                   temperature=method_temperature(cfg), dim=c.dim, num_negatives=c.num_negatives,
                   bank_momentum=c.bank_momentum, ce_weight=c.ce_weight, weight=c.weight, seed=int(cfg.train.seed))

    def __init__(self, encoder, projector, objective, num_classes: int = 0, *, teacher: nn.Module,
                 renorm: tuple[str, str] = ("imagenet", "imagenet"), num_samples: int, temperature: float = 0.07,
                 dim: int = 128, num_negatives: int = 16384, bank_momentum: float = 0.5, ce_weight: float = 0.0,
                 weight: float | None = None, seed: int = 0):
        super().__init__(encoder, projector, objective, num_classes)
        self.temperature = float(temperature)
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.teacher_head = nn.Linear(teacher.feature_dim, dim)
        # the student's views, normalised with its statistics, re-normalised as the teacher was trained
        (ms, ss), (mt, st) = (torch.tensor(normalization(n, None, None)) for n in renorm)
        self.register_buffer("renorm_scale", (ss / st).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", ((ms - mt) / st).view(1, 3, 1, 1), persistent=False)
        self.teacher_bank = MemoryBank(num_samples, dim, momentum=bank_momentum, seed=seed)
        self.student_bank = MemoryBank(num_samples, dim, momentum=bank_momentum, seed=seed + 1)
        self.num_negatives = int(num_negatives)
        self.ce_weight = float(ce_weight)
        labelled = self.ce_weight > 0
        self.weight = float(weight) if weight is not None else (0.8 if labelled else 1.0)
        self.wants_split_labels = labelled  # negatives from other classes: the engine gives the split's labels
        self.pools: ClassPools | None = None

    def set_split_labels(self, labels: torch.Tensor) -> None:
        """The label of every image of the split: with labels, each image's negatives come from other classes."""
        labels = torch.as_tensor(labels).long()
        n = self.teacher_bank.num_samples
        if labels.shape != (n,):
            raise ConfigError(f"crd: expected a label for each of the split's {n} images, got {tuple(labels.shape)}")
        missing = int((labels < 0).sum())
        if missing:
            raise ConfigError(f"crd.ce_weight={self.ce_weight} draws each image's negatives from the other classes: "
                              f"every image of the split needs a label, and {missing} of {n} have none")
        if labels.unique().numel() < 2:
            raise ConfigError("crd.ce_weight draws each image's negatives from the other classes: the split has one")
        self.pools = ClassPools(labels).to(self.teacher_bank.bank.device)

    def train(self, mode: bool = True) -> "CRD":
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never move
        return self

    def _negatives(self, all_idx: torch.Tensor, b: int) -> torch.Tensor:
        """(b, K) negatives of this rank's images: drawn for the whole global batch (``all_idx``) from one
        random stream, the same on every rank (the engine seeds them alike), this rank's rows kept; two
        processes draw what one does. From the other classes with labels, from the other images without."""
        start = D.row_offset(b)
        if self.ce_weight > 0:
            if self.pools is None:
                raise InfoviewError("crd with crd.ce_weight > 0 draws negatives from other classes: call "
                                    "set_split_labels with the split's labels first (the engine does)")
            if self.pools.order.device != all_idx.device:
                self.pools.to(all_idx.device)
            drawn = self.pools.sample(all_idx, self.num_negatives)
        else:
            drawn = self.teacher_bank.sample(all_idx, self.num_negatives)
        return drawn[start : start + b]

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None,
                indices: torch.Tensor | None = None) -> StepOutput:
        if indices is None:
            raise InfoviewError("crd keys its memory banks by image index: call it with the loader's indices")
        x = views[0]
        first = self.encoder(x)
        s = F.normalize(self.projector(first).float(), dim=-1)
        with torch.no_grad():
            t_feats = self.teacher(x * self.renorm_scale + self.renorm_shift)
        t = F.normalize(self.teacher_head(t_feats).float(), dim=-1)
        all_idx = D.gather_no_grad(indices)
        neg_idx = self._negatives(all_idx, x.shape[0])  # the same draws index both banks, as CRD's
        pos_s, neg_s = bank_logits(s, self.teacher_bank.bank[indices], self.teacher_bank.bank[neg_idx],
                                   self.temperature)
        pos_t, neg_t = bank_logits(t, self.student_bank.bank[indices], self.student_bank.bank[neg_idx],
                                   self.temperature)
        out_s, out_t = self._objective(pos_s, neg_s), self._objective(pos_t, neg_t)
        out_s.loss = self.weight * (out_s.loss + out_t.loss)
        cert = self._certify(D.gather_no_grad(s.detach()), D.gather_no_grad(t.detach()))
        with torch.no_grad():
            self.teacher_bank.update(all_idx, D.gather_no_grad(t.detach()))
            self.student_bank.update(all_idx, D.gather_no_grad(s.detach()))
        if self.ce_weight > 0 and labels is not None and self.probe is not None:
            return self._with_cross_entropy(out_s, cert, first, labels)
        return self._finish(out_s, cert, first, labels)

    def _with_cross_entropy(self, out, cert, first: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """The student's classifier (the probe's head) trained through the encoder, weighted by crd.ce_weight."""
        step = self._finish(out, cert, first, None)
        logits = self.probe(first.float())
        known = labels >= 0
        count = known.sum().to(logits.dtype)
        ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")[known].sum() / count.clamp(min=1)
        step.loss = step.loss + self.ce_weight * ce
        step.probe_loss = ce.detach()
        step.probe_correct = (logits.argmax(1) == labels)[known].sum().to(logits.dtype).detach()
        step.probe_count = count.detach()
        return step
