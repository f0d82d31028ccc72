"""Models: timm encoders, projector / predictor heads, the momentum encoder, negative stores.

``build_encoder(arch, cifar_stem=False, ...)`` wraps any timm model as a
feature extractor with ``.feature_dim`` (``streams="lab"``: one on the L and
one on the ab channels of CIELab, :mod:`infoview.models.lab`); the heads, the momentum encoder and
the queue / memory bank are separate parts so that each can be tested alone.
Importing this package builds nothing and does not import timm (timm is
imported by the first ``build_encoder`` call).

``export_backbone(ckpt, out_dir)`` writes a checkpoint's backbone as
``model.safetensors`` + ``config.json`` and ``load_backbone(out_dir)`` reads
it back as a timm model (``infoview.backbones.export``, imported on first use).

Names are imported on first use: importing this package (or its light
``choices``) imports no torch.
"""
from __future__ import annotations

from infoview.utils.lazy import lazy_exports

_EXPORTS = {
    "Encoder": "infoview.models.encoder",
    "build_encoder": "infoview.models.encoder",
    "MLP": "infoview.models.heads",
    "predictor": "infoview.models.heads",
    "projector": "infoview.models.heads",
    "MomentumEncoder": "infoview.models.momentum",
    "momentum_at": "infoview.models.momentum",
    "EpochVisits": "infoview.models.queue",
    "MemoryBank": "infoview.models.queue",
    "NegativeQueue": "infoview.models.queue",
    "SplitBatchNorm1d": "infoview.models.split_bn",
    "SplitBatchNorm2d": "infoview.models.split_bn",
    "convert_split_bn": "infoview.models.split_bn",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
