"""Methods turn views into (pos, neg) critic scores; the objective does the rest.

- :class:`SimCLR`: every view of every image goes through the encoder and the
  projector; positives are the other views of the same image, negatives every
  view of every other image in the **global** batch (gathered from all ranks
  with gradients, see :mod:`infoview.training.distributed`).
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
- :class:`~infoview.pretrain.methods.moco_v3.MoCoV3` (``moco_v3``): MoCo v3
  (Chen, Xie, He 2021): both views are queries (with a predictor), keys from a
  momentum copy whose momentum rises from 0.99 to 1 on a cosine, no queue:
  the negatives are the keys of the other images of the global batch
  (gathered without gradients); symmetric loss; SyncBN under DDP on GPUs; a ViT's
  patch projection can stay at its random init (``freeze_patch_embed``).

- :class:`LocalAggregation` (``la``, Zhuang, Zhai, Yamins 2019): one view
  against a memory bank of one row per image (``needs_indices``), with its own
  loss, not an objective's: -log P(C & B | v) / P(B | v), B the bank rows
  nearest v, C the images that share v's cluster in any of several k-means
  clusterings of the bank (made in torch at each epoch's start, kept in the
  state), after a warm-up of instance recognition (``la.kmeans_start_epoch``).
  Not an MI bound; its ``mi`` is the bank bound (``Method._certify_bank``),
  and ``objective.*`` must stay at its default.

- :class:`CMC` (Tian et al. 2019, as Wu et al. 2020 use it): one view per
  image, a ``model.streams=lab`` encoder (one network on the L channel of
  CIELab, one on ab, features side by side), L's embedding against ab's of
  the same image and ab's against L's; negatives from the other half's memory
  bank (``cmc.negatives=bank``, CMC's) or the global batch (``batch``). Its
  ``mi`` bounds I(L view; ab view) on the global batch's L-against-ab matrix.

- :class:`InstanceRecognition` (``method=ir``, Wu et al. 2018): one view of
  each image against a memory bank of one row per training image; the
  positive is the image's own row, the negatives ``ir.num_negatives`` rows of
  other images drawn at random (0: the whole bank); the batch's rows then
  move to its embeddings, gathered from every rank. Its ``mi`` is the view
  against the bank (``Method._certify_bank``: normalised over the images the
  epoch has not visited yet, ceiling log of their number), not the
  cross-view matrix below.

- :class:`~infoview.pretrain.methods.crd.CRD` (``crd``, Tian et al. 2020; what
  ``infoview distill`` runs): a frozen teacher (any ``backbone=`` spec) and a
  student; the student's embedding of an image against a bank of teacher
  embeddings and the teacher's against a bank of student embeddings, any
  objective, summed. Its ``mi`` bounds I(student embedding; teacher
  embedding) on the global batch's student-against-teacher matrix.

Any registered objective works with simclr, moco, moco_v3, ir, cmc and crd. Objectives whose loss is a mean of
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

Adding a method is one new file in this package: a :class:`Method` subclass
decorated with ``@register_method("<name>")`` (docs/architecture.md, "Adding a
method", walks through one). :mod:`infoview.pretrain.methods.registry` reads
each module's ``@register_method`` class, its docstring, ``DEFAULTS`` and
``demo`` from the file, so listing the methods and their keys imports no
torch; the module is imported when a run builds its method. Names here are
imported on first use.
"""
from infoview.utils.lazy import lazy_exports

_EXPORTS = {
    "register_method": "registry", "available_methods": "registry", "get_method": "registry",
    "method_sections": "registry", "check_method_sections": "registry",
    "Method": "base", "StepOutput": "base", "check_needs": "base", "method_temperature": "base",
    "objective_settings": "base",
    "SimCLR": "simclr", "MoCo": "moco", "MOCO_BN": "moco", "resolve_moco_bn": "moco",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
