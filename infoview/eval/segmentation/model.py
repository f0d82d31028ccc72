"""The model of `infoview segment`: a timm backbone's last feature map (dilated, or ViT tokens as a map) and a head."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infoview.config import did_you_mean
from infoview.errors import ConfigError, InfoviewError
from infoview.eval.choices import HEADS
from infoview.models import build_encoder
from infoview.models.encoder import is_vit

#: DeepLabV3's atrous rates are given for output stride 8; they scale with 8 / stride
DEEPLAB_RATES_AT_STRIDE_8 = (12, 24, 36)


def _timm_model(encoder: nn.Module) -> nn.Module:
    from infoview.models.lab import refuse_two_streams

    refuse_two_streams(encoder, "segmentation")
    model = getattr(encoder, "backbone", encoder)
    if not callable(getattr(model, "forward_features", None)):
        raise InfoviewError(
            f"backbone {type(model).__name__} has no forward_features(); segmentation needs a timm model"
        )
    return model


def _stride(model: nn.Module, size: int = 64) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        f = model.forward_features(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    model.train(was_training)
    if isinstance(f, (list, tuple)):
        f = f[-1]
    return max(1, round(size / f.shape[-1])) if f.dim() == 4 else 0


def dilated_backbone(encoder: nn.Module, output_stride: int) -> tuple[nn.Module, str]:
    """The timm model of ``encoder``, rebuilt with dilated last stages so that it has ``output_stride``.

    FCN and DeepLabV3 run their heads at output stride 8 (Long et al. 2015;
    Chen et al. 2017): the last stages' strides become dilations, so the
    weights are the same and the map is finer. timm does this for the models
    that take ``output_stride`` (ResNets and their kin); the encoder is rebuilt
    from its config with it and the weights are copied. Returns the model and
    a note saying what was done (or why not: ViTs keep their patch stride).
    """
    model = _timm_model(encoder)
    if output_stride in (0, 32) or is_vit(model):
        return model, "as built" if not is_vit(model) else "ViT: stride = patch size"
    if output_stride not in (8, 16):
        raise ConfigError(f"output_stride must be 8, 16 or 32 (0 = as built), got {output_stride}")
    now = _stride(model)
    if now <= output_stride:
        return model, "as built (already at or below the asked stride)"
    config = getattr(encoder, "config", None)
    timm_stride = 32 * output_stride // now  # a CIFAR stem makes a net 4x finer than timm counts
    if not isinstance(config, dict) or timm_stride not in (8, 16):
        return model, f"as built (cannot rebuild {type(model).__name__} with output_stride)"
    kwargs = dict(config.get("kwargs") or {})
    try:
        rebuilt = build_encoder(config["arch"], cifar_stem=bool(config.get("cifar_stem")),
                                img_size=config.get("img_size"), output_stride=timm_stride, **kwargs)
    except ConfigError:
        return model, f"as built ({config['arch']} does not take output_stride)"
    rebuilt = rebuilt.backbone.to(next(model.parameters()).device)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.train(model.training)
    return rebuilt, f"dilated to output stride {output_stride}"


def fit_vit_to(model: nn.Module, size: int) -> None:
    """Set a timm ViT to ``size`` x ``size`` input (position embeddings resampled by timm)."""
    pe = model.patch_embed
    ph, pw = (pe.patch_size if isinstance(pe.patch_size, (tuple, list)) else (pe.patch_size,) * 2)
    if size % ph or size % pw:
        lo, hi = (size // ph) * ph, (size // ph + 1) * ph
        raise ConfigError(
            f"data.size={size} is not a multiple of the ViT's patch size {ph}; use {lo or hi} or {hi}"
        )
    if getattr(model, "dynamic_img_size", False):
        return
    current = tuple(getattr(pe, "img_size", ()) or ())
    if current != (size, size):
        if not callable(getattr(model, "set_input_size", None)):
            raise InfoviewError(f"{type(model).__name__} cannot change its input size to {size}")
        model.set_input_size(img_size=(size, size))


def tokens_to_map(model: nn.Module, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, C) ViT tokens -> (B, C, h, w), prefix (class, register) tokens dropped."""
    b, n, c = tokens.shape
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    patch = tokens[:, prefix:]
    pe = getattr(model, "patch_embed", None)
    if pe is not None and callable(getattr(pe, "dynamic_feat_size", None)):
        h, w = pe.dynamic_feat_size(hw)
    else:
        h = w = int(round(math.sqrt(patch.shape[1])))
    if h * w != patch.shape[1]:
        raise InfoviewError(
            f"cannot lay out {patch.shape[1]} tokens ({n} less {prefix} prefix tokens) as a {h}x{w} map"
        )
    return patch.transpose(1, 2).reshape(b, c, h, w)


def build_head(name: str, in_channels: int, num_classes: int, stride: int) -> nn.Module:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead
    from torchvision.models.segmentation.fcn import FCNHead

    if name == "fcn":
        return FCNHead(in_channels, num_classes)
    if name == "deeplabv3":
        rates = [max(1, round(r * 8 / stride)) for r in DEEPLAB_RATES_AT_STRIDE_8]
        return DeepLabHead(in_channels, num_classes, atrous_rates=rates)
    raise ConfigError(f"unknown head '{name}'" + did_you_mean(name, HEADS) + f" Heads: {', '.join(HEADS)}")


class SegmentationModel(nn.Module):
    """A timm backbone's last feature map -> a segmentation head -> logits at the input size."""

    def __init__(self, backbone: nn.Module, head: str, num_classes: int, size: int, freeze: bool = False):
        super().__init__()
        self.backbone = backbone
        self.freeze = bool(freeze)
        self.vit = is_vit(backbone)
        if self.vit:
            fit_vit_to(backbone, size)
        if self.freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():  # one dry run: channels and stride of the feature map
            probe = self.features(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
        backbone.train(was_training)
        self.in_channels = int(probe.shape[1])
        self.stride = max(1, round(size / probe.shape[-1]))
        self.feature_hw = tuple(probe.shape[-2:])
        self.head_name = head
        self.head = build_head(head, self.in_channels, num_classes, self.stride)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            f = self.backbone.forward_features(x)
        if isinstance(f, (list, tuple)):
            f = f[-1]
        if f.dim() == 3:
            return tokens_to_map(self.backbone, f, tuple(x.shape[-2:]))
        if f.dim() != 4:
            raise InfoviewError(f"backbone features have shape {tuple(f.shape)}; expected a map or tokens")
        nf = getattr(self.backbone, "num_features", None)
        if nf is not None and f.shape[1] != nf and f.shape[-1] == nf:  # NHWC (Swin and friends)
            f = f.permute(0, 3, 1, 2)
        return f.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()  # frozen features: BN statistics stay as they were
        return self
