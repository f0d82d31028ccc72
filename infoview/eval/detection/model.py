"""The model of `infoview detect`: Mask/Faster R-CNN with an FPN on a timm ResNet or ViT (ViTDet's pyramid)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import InfoviewError
from infoview.models.encoder import is_vit
from infoview.models.lab import refuse_two_streams

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
PYRAMID_STRIDES = (4, 8, 16, 32)


def timm_model_of(encoder: nn.Module) -> nn.Module:
    """The timm model inside an infoview Encoder (or the model itself)."""
    return getattr(encoder, "backbone", encoder)


def is_resnet_like(model: nn.Module) -> bool:
    names = {n for n, _ in model.named_children()}
    return {"conv1", *RESNET_STAGES} <= names


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _freeze_bn(parent: nn.Module, names: Sequence[str]) -> None:
    """Replace BatchNorm in the named children of ``parent`` by FrozenBatchNorm2d (timm's, BN+act too)."""
    from timm.layers import freeze_batch_norm_2d

    for name in names:
        child = getattr(parent, name, None)
        if isinstance(child, nn.Module):
            setattr(parent, name, freeze_batch_norm_2d(child))


def _stage_channels(model: nn.Module) -> list[int]:
    """Output channels of layer1..layer4: timm's feature_info, else one dry run."""
    info = getattr(model, "feature_info", None)
    try:
        by_module = {f["module"]: int(f["num_chs"]) for f in info}
        return [by_module[s] for s in RESNET_STAGES]
    except (TypeError, KeyError):
        pass
    from torchvision.models._utils import IntermediateLayerGetter

    getter = IntermediateLayerGetter(model, {s: s for s in RESNET_STAGES})
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = getter(torch.zeros(1, 3, 64, 64))
    model.train(was_training)
    return [int(out[s].shape[1]) for s in RESNET_STAGES]


def resnet_fpn_backbone(model: nn.Module, fpn_channels: int, frozen_stages: int, train_bn: bool) -> nn.Module:
    """torchvision's BackboneWithFPN over a timm ResNet's layer1..layer4 (strides 4..32, plus a pooled level).

    The stem (everything before layer1) and the first ``frozen_stages`` stages
    stop learning (``-1``: nothing frozen). Their BatchNorm is frozen always;
    the other stages' BatchNorm too unless ``train_bn``.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    children = [n for n, _ in model.named_children()]
    stem = children[: children.index("layer1")]
    if children.index("layer4") < max(children.index(s) for s in RESNET_STAGES[:3]):
        raise InfoviewError(f"{type(model).__name__}: layer1..layer4 are not in forward order; cannot build an FPN")
    in_channels = _stage_channels(model)
    frozen = [] if frozen_stages < 0 else stem + list(RESNET_STAGES[:frozen_stages])
    for name in frozen:
        _freeze(getattr(model, name))
    _freeze_bn(model, children if not train_bn else frozen)
    return BackboneWithFPN(
        model, {s: str(i) for i, s in enumerate(RESNET_STAGES)}, in_channels, fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain Vision Transformer
    Backbones for Object Detection"): the last block's patch tokens as a map at stride
    ``patch``, turned into maps at strides 4, 8, 16, 32 by 2x2 stride-2 deconvolutions
    (LayerNorm and GELU between two) or max-pooling, each followed by a 1x1 and a 3x3
    conv with LayerNorm, plus a stride-64 level by subsampling (torchvision's
    LastLevelMaxPool). Outputs ``OrderedDict('0'..'3', 'pool')`` as BackboneWithFPN does.

    The ViT is switched to dynamic input size (position embeddings resampled to
    each batch's grid), so images of any size padded to a multiple of 32 fit.
    """

    def __init__(self, vit: nn.Module, out_channels: int, frozen_stages: int = -1):
        super().__init__()
        from timm.layers import Format, LayerNorm2d

        pe = vit.patch_embed
        ph, pw = pe.patch_size
        if ph != pw or ph & (ph - 1) or not 1 <= ph <= 32:
            raise InfoviewError(
                f"the simple feature pyramid needs square patches whose side is a power of 2 up to 32, "
                f"got patch size {ph}x{pw}"
            )
        vit.dynamic_img_size = True
        pe.strict_img_size = False
        pe.flatten = False
        pe.output_fmt = Format.NHWC
        if hasattr(pe, "dynamic_img_pad"):
            pe.dynamic_img_pad = False
        self.vit = vit
        self.patch = ph
        self.out_channels = out_channels
        dim = int(vit.num_features)
        levels = []
        for stride in PYRAMID_STRIDES:
            layers: list[nn.Module] = []
            d = dim
            if stride < ph:
                ups = int(math.log2(ph // stride))
                for j in range(ups):
                    layers.append(nn.ConvTranspose2d(d, d // 2, 2, stride=2))
                    d //= 2
                    if j < ups - 1:
                        layers += [LayerNorm2d(d), nn.GELU()]
            elif stride > ph:
                layers.append(nn.MaxPool2d(stride // ph, stride // ph))
            layers += [
                nn.Conv2d(d, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels),
            ]
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        """-1: nothing; 0: patch and position embeddings; k in 1..4: and the first k quarters of the blocks."""
        if frozen_stages < 0:
            return
        vit = self.vit
        _freeze(vit.patch_embed)
        for name in ("cls_token", "reg_token", "pos_embed", "dist_token"):
            p = getattr(vit, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)
        n = len(vit.blocks)
        for blk in list(vit.blocks)[: round(n * min(frozen_stages, 4) / 4)]:
            _freeze(blk)
        if frozen_stages >= 4:
            _freeze(vit)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:  # the R-CNN transform pads to 32; be safe anyway
            x = F.pad(x, (0, -w % self.patch, 0, -h % self.patch))
        feat = self.vit.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
        out = OrderedDict((str(i), level(feat)) for i, level in enumerate(self.levels))
        out["pool"] = F.max_pool2d(out[str(len(self.levels) - 1)], 1, 2, 0)
        return out


def build_fpn_backbone(encoder: nn.Module, fpn_channels: int, frozen_stages: int, train_bn: bool) -> nn.Module:
    model = timm_model_of(encoder)
    if is_resnet_like(model):
        return resnet_fpn_backbone(model, fpn_channels, frozen_stages, train_bn)
    if is_vit(model):
        return SimpleFeaturePyramid(model, fpn_channels, frozen_stages)
    raise InfoviewError(
        f"detection supports ResNet-like timm models (conv1, layer1..layer4: resnet*, resnet*d, seresnext*, ...) "
        f"and ViTs (vit_*, deit_*); got {type(model).__name__}"
    )


def build_detector(encoder: nn.Module, task: str, num_classes: int, mean, std, m, train_bn: bool) -> nn.Module:
    """Mask R-CNN (segm) or Faster R-CNN (bbox) with an FPN on the encoder; ``m`` is cfg.model."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    refuse_two_streams(encoder, "detection")
    backbone = build_fpn_backbone(encoder, int(m.fpn_channels), int(m.frozen_stages), train_bn)
    c = backbone.out_channels
    rep = int(m.box_head_dim)
    kw = dict(
        min_size=int(m.min_size), max_size=int(m.max_size), image_mean=list(mean), image_std=list(std),
        box_batch_size_per_image=int(m.roi_batch_size), box_detections_per_img=int(m.detections_per_img),
        box_head=TwoMLPHead(c * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, num_classes),
    )
    if task == "bbox":
        return FasterRCNN(backbone, num_classes=None, **kw)
    md = int(m.mask_head_dim)
    return MaskRCNN(backbone, num_classes=None, mask_head=MaskRCNNHeads(c, (md,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(md, md, num_classes), **kw)

