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
"""
from infoview.models.encoder import Encoder, build_encoder
from infoview.models.heads import MLP, predictor, projector
from infoview.models.momentum import MomentumEncoder, momentum_at
from infoview.models.queue import EpochVisits, MemoryBank, NegativeQueue
from infoview.models.split_bn import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_bn

__all__ = [
    "Encoder",
    "build_encoder",
    "MLP",
    "projector",
    "predictor",
    "MomentumEncoder",
    "momentum_at",
    "NegativeQueue",
    "MemoryBank",
    "EpochVisits",
    "SplitBatchNorm1d",
    "SplitBatchNorm2d",
    "convert_split_bn",
]

