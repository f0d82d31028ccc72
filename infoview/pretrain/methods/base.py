"""What every pretraining method shares (the registry that names them: :mod:`infoview.pretrain.methods.registry`).

A method is one file in this package: a :class:`Method` subclass decorated
with ``@register_method("<name>")``, which owns its config section
(``DEFAULTS``, checked by the CLI like every other key), builds itself from a
config (``from_config``) and checks what only it knows (``check_run``). The
engine holds no ``if method == ...``: it asks the registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError
from infoview.models import EpochVisits, MemoryBank, predictor as make_predictor, projector as make_projector
from infoview.objectives import Objective, ObjectiveOutput, bank_bound_of_scores, cross_view_pairs, objective_params
from infoview.pretrain.methods.registry import (  # noqa: F401 - the registry's names, where they have always been
    _METHODS,
    available_methods,
    check_method_sections,
    get_method,
    method_sections,
    register_method,
)
from infoview.training import distributed as D


def method_temperature(cfg) -> float | None:
    """The temperature the method divides its scores by (``cfg.<method>.temperature``), checked; None if it has none."""
    section = cfg.get(cfg.method) or {}
    if "temperature" not in section:
        return None
    t = section["temperature"]
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf")):
        raise ConfigError(f"{cfg.method}.temperature divides the scores: it must be a positive number, got {t}")
    return float(t)


def objective_settings(cfg) -> dict:
    """The keyword arguments of ``objective.<name>``: ``objective.*`` less the name, and the method's temperature
    where the objective takes one (HCL's and DCL's floor K exp(-1/t) must use the temperature the scores were
    divided by). The method owns it: an ``objective.temperature`` that differs is a ConfigError."""
    params = {k: v for k, v in cfg.objective.items() if k != "name"}
    name = cfg.objective.name
    temperature = method_temperature(cfg)
    if "temperature" in objective_params(name) and temperature is not None:
        given = params.get("temperature", temperature)
        if given != temperature:
            raise ConfigError(f"objective.temperature={given} and {cfg.method}.temperature={temperature} disagree: "
                              f"{cfg.method} divides the scores by its own, which {name} then uses too; "
                              f"set {cfg.method}.temperature only")
        params["temperature"] = temperature
    return params


def projector_from_config(model_cfg, feature_dim: int) -> nn.Module:
    """The projection head ``model.proj_*`` describes."""
    m = model_cfg
    return make_projector(feature_dim, m.proj_hidden, m.proj_dim, m.proj_layers, m.proj_bn, m.proj_last_bn)


def predictor_from_config(hidden: int, dim: int) -> nn.Module | None:
    """The predictor of ``hidden`` units a method's ``pred_hidden`` asks for (None when it is 0)."""
    return make_predictor(dim, int(hidden)) if hidden else None


@dataclass
class StepOutput:
    loss: torch.Tensor  # what to backpropagate: the objective's loss plus the probe's
    ssl_loss: torch.Tensor  # detached
    mi: torch.Tensor  # detached: the objective's certified bound on the cross-view matrix, nats (NaN: none)
    ceiling: float  # the most that bound can read (may be inf)
    mi_estimate: torch.Tensor  # detached: what the training rows read; not a bound
    probe_loss: torch.Tensor  # detached (0 without labels)
    probe_correct: torch.Tensor  # detached count of correct probe predictions on this rank's batch
    probe_count: torch.Tensor


class Method(nn.Module):
    """A pretraining method: views in, the objective's loss (and the MI bound it certifies) out.

    A subclass registers itself with :func:`register_method` and declares:

    - ``DEFAULTS``: its config section (``cfg.<name>``), every key with its default (an
      :class:`infoview.schema.Key`: with one line of help and its choices or bounds);
    - ``num_views``: how many views of an image it takes (None: any number from 2 up; 1 for a
      method that contrasts a view with a memory bank);
    - ``needs_indices``: True when ``forward`` takes each image's index in the training split as a
      third argument (``forward(views, labels, indices)``, int64 (B,) on the device: the loader's
      ``with_indices``), to key a memory bank by; such a method builds its bank with
      ``num_samples`` rows;
    - ``certifies``: whether it reports an MI bound (a method with no contrastive
      objective, BYOL say, sets False and reports none, instead of inventing one);
    - ``from_config(cfg, encoder, objective, num_classes, num_samples=0)``: builds it from a
      pretraining config (its own section, ``cfg.model`` for heads); ``num_samples`` is the
      training split's size;
    - optionally ``check_run(local_batch, world)``: checks that need the built
      method and the run's shape (per-process batch, number of processes);
    - optionally ``wants_split_labels`` and ``set_split_labels(labels)``: the label of every image of
      the training split, given by the engine before the first step;
    - ``sync_bn``: True when it asks for SyncBatchNorm under DDP;
    - optionally ``needs(cfg, num_samples)``: every change a config needs before the method can train
      on a split of ``num_samples`` images, all of them (:func:`check_needs` raises them in one error),
      and ``demo``: a command that trains it on the demo's digits (``infoview list methods`` shows it).
    """

    name: str = ""
    DEFAULTS: dict = {}
    num_views: int | None = None
    needs_indices: bool = False
    certifies: bool = True
    sync_bn: bool = False
    #: buffers besides its memory banks that every rank keeps alike by construction (LA's clusterings)
    same_on_every_rank: tuple[str, ...] = ()
    #: True when it needs the label of every image of the training split before its first step: the engine
    #: then calls ``set_split_labels`` (CRD with labels draws negatives from other classes)
    wants_split_labels: bool = False
    #: a command that trains it on the demo's digits, in a minute or so on a CPU (``infoview list methods``)
    demo: str = ""

    def __init__(self, encoder: nn.Module, projector: nn.Module, objective: Objective, num_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.objective = objective
        self.probe = nn.Linear(encoder.feature_dim, num_classes) if num_classes > 0 else None

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, objective: Objective, num_classes: int,
                    num_samples: int = 0) -> "Method":
        raise NotImplementedError(f"method {cls.name} does not say how to build it from a config")

    @classmethod
    def needs(cls, cfg, num_samples: int) -> list[str]:
        """What ``cfg`` must change before this method trains on a split of ``num_samples`` images: one
        ``"key ... (why)"`` per change, every one of them; none by default."""
        return []

    def check_run(self, local_batch: int, world: int) -> None:
        """Checks that need the built method and the run's shape; nothing by default."""

    def set_split_labels(self, labels: torch.Tensor) -> None:
        """The label of every image of the training split (int64 (N,), -1: none), for ``wants_split_labels``."""

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """What DDP leaves out of its broadcast of rank 0's buffers at every step: each memory bank (every rank
        builds it from one seed and updates it alike from the gathered batch; 655 MB on ImageNet) and
        ``same_on_every_rank``."""
        banks = [f"{name}.bank" for name, module in self.named_modules() if isinstance(module, MemoryBank)]
        visits = [f"{name}.{b}" for name, module in self.named_modules() if isinstance(module, EpochVisits)
                  for b in ("visited", "epoch")]
        return banks + visits + list(self.same_on_every_rank)

    def set_progress(self, step: int, total_steps: int, epoch: float) -> None:
        """Schedules that follow training progress: the objective's (Ring's outer threshold, ML-CPC's alpha);
        a new epoch forgets the images the last one visited (:class:`EpochVisits`)."""
        self.objective.set_epoch(epoch)
        for module in self.modules():
            if isinstance(module, EpochVisits):
                module.start(math.floor(round(float(epoch), 9)))

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

    def _drawn_negatives(self, scores: torch.Tensor, indices: torch.Tensor, everyone: torch.Tensor,
                         k: int) -> torch.Tensor:
        """(B, k): this rank's views' scores (B, N) against ``k`` rows of ``self.bank`` drawn for each from the
        other images' rows (``MemoryBank.sample``). The draws are made for the whole global batch
        (``everyone``) from one random stream, the same on every rank (the engine seeds them alike), and
        each rank keeps its own rows of them: two processes draw what one does."""
        b = indices.shape[0]
        start = D.row_offset(b)
        return scores.gather(1, self.bank.sample(everyone, k)[start : start + b])

    @torch.no_grad()
    def _certify_bank(self, scores: torch.Tensor, indices: torch.Tensor, everyone: torch.Tensor) -> ObjectiveOutput:
        """A memory-bank method's bound, from the (B, N) scores (over the temperature) it already has of its
        normalised views against every row of the bank, taken before this batch updates it
        (objectives.bank_bound_of_scores), whatever objective the method trains with. The loader visits each
        image once an epoch, so the bound is normalised over the images the epoch has not visited yet
        (``self.visits``, an :class:`EpochVisits`): a bound on I(view; image index | the run so far), ceiling
        log of their number. Then the global batch's images (``everyone``, gathered from every rank) are
        marked visited."""
        cert = bank_bound_of_scores(scores, indices, self.visits.visited)
        self.visits.mark(everyone)
        return cert

    def _finish(self, out: ObjectiveOutput, cert: ObjectiveOutput | None, first_feats: torch.Tensor,
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
        if cert is None or not self.certifies:  # no bound is reported, none invented (NaN: blank in metrics.csv)
            mi, ceiling = out.loss.detach().new_full((), float("nan")), float("nan")
        else:
            mi, ceiling = cert.mi, cert.ceiling
        estimate = out.estimate if out.estimate is not None else out.mi
        return StepOutput(loss, out.loss.detach(), mi, ceiling, estimate, probe_loss, correct.detach(), count.detach())


def at_most(limit: int) -> int:
    """The largest power of two up to ``limit`` (>= 1): what an error suggests for a count the split caps."""
    return 1 << max(int(limit), 1).bit_length() - 1


def check_needs(cfg, num_views: int, num_samples: int) -> None:
    """Every change ``cfg.method`` needs to train on a split of ``num_samples`` images with a recipe of
    ``num_views`` views, in one ConfigError, before anything is built: its view count and what the method's
    ``needs`` says (a run that needed three changes was refused three times, one at a time)."""
    cls = get_method(cfg.method)
    found = []
    if cls.num_views is not None and num_views != cls.num_views:
        found.append(f"method={cfg.method} takes augment.num_views={cls.num_views} and a {cls.num_views}-view recipe")
    elif cls.num_views is None and num_views < 2:
        found.append(f"method={cfg.method} contrasts views of one image: augment.num_views must be at least 2, "
                     f"got {num_views}")
    found += cls.needs(cfg, num_samples)
    if found:
        raise ConfigError(f"method={cfg.method} on a split of {num_samples:,} images needs {len(found)} change(s): "
                          + "; ".join(found) + ". `infoview list methods` shows a demo-sized run of each method")

