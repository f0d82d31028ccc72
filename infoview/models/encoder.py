"""The encoder: any timm model as a feature extractor, optionally with a stem for 32-px images.

Pretraining needs pooled features and nothing else, so the timm model is built
with ``num_classes=0`` (its forward returns (B, num_features)) and kept as
``encoder.backbone`` untouched otherwise: its ``state_dict`` has timm's own key
names, which is what lets an export be loaded back by plain
``timm.create_model``.

ImageNet stems throw away most of a 32x32 image before the first block (a
stride-2 7x7 conv and a stride-2 max-pool leave 8x8), so for CIFAR-sized data
``cifar_stem=True`` swaps the stem the way the SimCLR and MoCo CIFAR recipes do:

- ResNet-like models (timm models with ``conv1``, ``bn1`` and ``maxpool``, which
  covers ResNet, ResNet-D/-T deep stems, SE-ResNeXt, ResNeSt, ...): ``conv1``
  becomes one 3x3 stride-1 conv without bias and ``maxpool`` an identity, so
  the stem keeps the input resolution;
- pre-activation ResNets (timm's ``ResNetV2``: ``resnetv2_18``, ``resnetv2_50``,
  ...): their ``stem`` becomes the same, one 3x3 stride-1 conv without bias to
  the stem's width (``stem.conv``) and no pooling (``stem.pool``, an identity);
- Vision Transformers (timm's ``VisionTransformer`` and DeiT): patches of 4
  pixels instead of 16 (unless ``patch_size`` is given), at ``img_size`` 32
  unless another size is given.

``streams="lab"`` builds CMC's pair instead (infoview.models.lab): one copy of
``arch`` on the L channel of CIELab and one on ab (``in_chans`` 1 and 2), as one
module that takes the same normalised RGB batch (``input_mean`` and
``input_std`` undo that normalisation) and returns both halves' features side
by side.

``encoder.config`` is a plain dict from which ``build_encoder`` rebuilds the
same architecture; it is what an export's ``config.json`` records.
"""
from __future__ import annotations

import inspect
import re
import sys
from typing import Any, Sequence

import torch
from torch import nn

from infoview.config import did_you_mean
from infoview.errors import ConfigError, InfoviewError
from infoview.models.choices import STREAMS

#: timm modules whose models are VisionTransformers (patch_size and img_size apply)
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def is_vit_arch(arch: str) -> bool:
    """Whether timm builds ``arch`` as a plain VisionTransformer (vit_*, deit_*): patch size and img_size rule."""
    import timm

    return timm.models.model_entrypoint(arch).__module__ in VIT_MODULES


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` (a timm backbone) is a vision transformer: patch tokens (``patch_embed``, prefix
    tokens), not feature maps. Detection and segmentation build their ViT paths on this test."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
CIFAR_STEM_FAMILIES = (
    "ResNet-like models with conv1/bn1/maxpool (resnet*, resnet*d, resnet*t, seresnext*, resnest*, ...), "
    "pre-activation ResNets (resnetv2_*) and Vision Transformers (vit_*, deit_*)"
)
#: input size a ViT gets with cifar_stem=True when no img_size is given
CIFAR_IMG_SIZE = 32


class Encoder(nn.Module):
    """A timm backbone that maps (B, C, H, W) images to (B, feature_dim) features.

    Built by :func:`build_encoder`; the attributes record how, so that
    ``encoder.config`` can rebuild the same architecture.
    """

    def __init__(
        self,
        backbone: nn.Module,
        arch: str,
        cifar_stem: bool = False,
        img_size: int | None = None,
        kwargs: dict[str, Any] | None = None,
        streams: str = "rgb",
        input_mean: tuple[float, ...] | None = None,
        input_std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.cifar_stem = bool(cifar_stem)
        self.img_size = img_size
        self.kwargs = dict(kwargs or {})
        self.streams = streams
        self.input_mean = None if input_mean is None else tuple(float(v) for v in input_mean)
        self.input_std = None if input_std is None else tuple(float(v) for v in input_std)
        self.feature_dim = int(backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InfoviewError(
                f"{self.arch} encoder expects a (B, C, H, W) image batch, got shape {tuple(x.shape)}"
            )
        return self.backbone(x)

    @property
    def config(self) -> dict[str, Any]:
        """``{"arch", "cifar_stem", "img_size", "kwargs", "feature_dim"}``, JSON-able; a ``streams="lab"``
        encoder adds ``streams``, ``input_mean`` and ``input_std``.

        ``build_encoder(**{k: v for k, v in config.items() if k != "feature_dim"})``
        builds the same architecture (tuples in kwargs come back as lists, which
        timm accepts).
        """
        config = {
            "arch": self.arch,
            "cifar_stem": self.cifar_stem,
            "img_size": self.img_size,
            "kwargs": {key: _jsonable(value, f"{self.arch} kwarg '{key}'") for key, value in self.kwargs.items()},
            "feature_dim": self.feature_dim,
        }
        if self.streams != "rgb":
            config.update(streams=self.streams, input_mean=list(self.input_mean), input_std=list(self.input_std))
        return config

    def extra_repr(self) -> str:
        streams = "" if self.streams == "rgb" else f", streams={self.streams!r}"
        return (f"arch={self.arch!r}, cifar_stem={self.cifar_stem}, img_size={self.img_size}, "
                f"feature_dim={self.feature_dim}{streams}")


def build_encoder(
    arch: str,
    cifar_stem: bool = False,
    img_size: int | None = None,
    pretrained: bool = False,
    streams: str = "rgb",
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build ``arch`` (any timm model name) as an :class:`Encoder`.

    ``kwargs`` go to ``timm.create_model`` (``drop_path_rate=0.1``; for a small
    ResNet ``channels=(16, 32, 64, 128)``, plus ``stem_width=8`` for the deep
    stems of ``resnet*d`` / ``resnet*t``; ``depth=2`` for a shallow ViT).
    ``img_size`` is passed to models that take it (ViTs, Swin, ...); a
    convolutional net takes any size, so for it ``img_size`` is only recorded.
    ``pretrained=True`` lets timm fetch its weights (with ``cifar_stem`` the
    replaced stem is then freshly initialised).

    A ``kwargs={...}`` dict (as in ``encoder.config``) is the same as passing
    its items as keyword arguments, so ``build_encoder(**config)`` works.

    ``streams="lab"`` builds ``arch`` twice, on L (``in_chans=1``) and on ab
    (``in_chans=2``), as one :class:`infoview.models.lab.LabStreams` backbone;
    ``input_mean`` / ``input_std`` are the normalisation of its RGB input
    (they are undone before the Lab conversion).
    """
    import timm

    kwargs = _merge_config_kwargs(kwargs)
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"encoder arch must be a timm model name such as 'resnet18', got {arch!r}")
    if not timm.is_model(arch):
        raise ConfigError(
            f"unknown encoder arch '{arch}'" + did_you_mean(arch, timm.list_models())
            + " (any name from timm.list_models() works)"
        )
    if not isinstance(cifar_stem, bool):
        raise ConfigError(f"encoder cifar_stem must be true or false, got {cifar_stem!r}")
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise ConfigError(f"encoder img_size must be a positive int (pixels) or None, got {img_size!r}")
    if "num_classes" in kwargs:
        raise ConfigError(
            f"encoder kwarg 'num_classes' is not allowed: the {arch} encoder is built with num_classes=0 "
            "to return pooled features (put a head on top instead)"
        )
    if streams not in STREAMS:
        raise ConfigError(f"model.streams must be one of {', '.join(STREAMS)}, got {streams!r}")
    if streams == "rgb":
        backbone, img_size = _backbone(timm, arch, cifar_stem, img_size, pretrained, kwargs)
        return Encoder(backbone, arch, cifar_stem=cifar_stem, img_size=img_size, kwargs=kwargs)
    from infoview.models.lab import LAB_CHANNELS, LabStreams

    if "in_chans" in kwargs:
        raise ConfigError("model.kwargs.in_chans is set by model.streams=lab (1 for L, 2 for ab): remove it")
    if input_mean is None or input_std is None or len(input_mean) != 3 or len(input_std) != 3:
        raise ConfigError(f"model.streams=lab needs the RGB input's mean and std (3 values each) to undo them, "
                          f"got input_mean={input_mean!r}, input_std={input_std!r}")
    halves = [_backbone(timm, arch, cifar_stem, img_size, pretrained, {**kwargs, "in_chans": c})
              for c in LAB_CHANNELS.values()]
    backbone = LabStreams(halves[0][0], halves[1][0], input_mean, input_std)
    return Encoder(backbone, arch, cifar_stem=cifar_stem, img_size=halves[0][1], kwargs=kwargs, streams=streams,
                   input_mean=input_mean, input_std=input_std)


def _backbone(timm, arch: str, cifar_stem: bool, img_size: int | None, pretrained: bool,
              kwargs: dict[str, Any]) -> tuple[nn.Module, int | None]:
    """One timm model (num_classes=0) with the CIFAR stem if asked, and the img_size it records."""
    entry_module = timm.models.model_entrypoint(arch).__module__
    is_vit = is_vit_arch(arch)

    create_kw = dict(kwargs)
    if is_vit and cifar_stem:
        create_kw.setdefault("patch_size", 4)
        if img_size is None:
            img_size = CIFAR_IMG_SIZE
    if img_size is not None:
        create_kw["img_size"] = img_size  # dropped again in _create for a model that does not take it

    backbone = _create(timm, arch, pretrained, create_kw, entry_module, img_size, is_vit)

    if is_vit:
        img_size = _vit_img_size(backbone, img_size)
    if cifar_stem and not is_vit:  # for a ViT, patch_size / img_size above are the whole change
        if _is_resnet_like(backbone):
            _replace_resnet_stem(backbone)
        elif type(backbone).__name__ == "ResNetV2" and isinstance(getattr(backbone, "stem", None), nn.Sequential):
            _replace_resnetv2_stem(backbone)
        else:
            raise ConfigError(
                f"cifar_stem=True is not supported for encoder arch '{arch}' "
                f"({type(backbone).__name__}); it is supported for {CIFAR_STEM_FAMILIES}"
            )
    return backbone, img_size


#: keyword arguments of timm's builders that load, fetch or reshape rather than describe the architecture
#: (with those of timm.create_model's own signature, read at run time): never taken from a config
TIMM_LOADING_KEYS = ("pretrained_strict", "pretrained_filter_fn", "pretrained_model_args", "kwargs_filter",
                     "model_cfg", "feature_cfg", "features_only", "feature_cls", "out_indices", "pruned")
#: build_encoder's own parameters, which a config records under their own names, not among the timm kwargs
OWN_PARAMETERS = ("cifar_stem", "img_size", "pretrained", "streams", "input_mean", "input_std")


def architecture_kwargs(arch: str, kwargs: Any, where: str) -> dict[str, Any]:
    """``kwargs`` (timm keyword arguments read from a config, an export's config.json or a checkpoint), checked
    to be architecture keyword arguments of ``arch`` only; anything else is one ConfigError naming ``where``.

    An allow-list: a key is taken when some timm module class of ``arch``'s model module (the model's own class,
    its blocks, the layers it imports) has a keyword parameter of that name, and is not one of timm's loading
    keys (``timm.create_model``'s own parameters: ``pretrained``, ``pretrained_cfg``,
    ``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir``, ...; :data:`TIMM_LOADING_KEYS`) or a
    parameter of :func:`build_encoder` recorded under its own name. Loading keys reach ``create_model`` or
    ``build_model_with_cfg``, never a model class, so a deny-list of them would miss whatever a later timm
    adds; the classes' parameters are what an architecture can be described with.
    """
    import timm

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"{where}: expected a mapping of timm keyword arguments, got {kwargs!r}")
    if not isinstance(arch, str) or not timm.is_model(arch):
        return dict(kwargs)  # build_encoder names the unknown arch
    allowed = _architecture_keywords(timm, arch)
    refused = sorted(k for k in kwargs if k not in allowed)
    if refused:
        loading = sorted(set(refused) & _loading_keys(timm))
        why = (f" ({', '.join(loading)}: timm would load or fetch weights or files; the weights are infoview's own)"
               if loading else "")
        raise ConfigError(f"{where}: {', '.join(map(repr, refused))} is not an architecture keyword argument of "
                          f"timm's '{arch}'{why}; only those are taken from a config")
    return dict(kwargs)


def _loading_keys(timm) -> set[str]:
    return (set(inspect.signature(timm.create_model).parameters) - {"model_name", "kwargs"}) | set(TIMM_LOADING_KEYS)


def _architecture_keywords(timm, arch: str) -> set[str]:
    """The keyword parameters of the timm module classes in ``arch``'s model module, less the loading keys."""
    module = sys.modules[timm.models.model_entrypoint(arch).__module__]
    names: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__.startswith("timm."):
            try:
                params = inspect.signature(value.__init__).parameters.values()
            except (TypeError, ValueError):
                continue
            names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names - {"self"} - _loading_keys(timm) - set(OWN_PARAMETERS)


# --------------------------------------------------------------------------- helpers


def _merge_config_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Unpack the ``kwargs`` entry of an ``Encoder.config`` into the other timm kwargs."""
    if "kwargs" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    nested = kwargs.pop("kwargs")
    if nested is None:
        return kwargs
    if not isinstance(nested, dict):
        raise ConfigError(f"encoder kwargs must be a mapping of timm keyword arguments, got {nested!r}")
    both = sorted(set(nested) & set(kwargs))
    if both:
        raise ConfigError(f"encoder kwarg(s) {', '.join(both)} given both directly and inside kwargs")
    return {**nested, **kwargs}


def _create(timm, arch, pretrained, create_kw, entry_module, img_size, is_vit) -> nn.Module:
    """``timm.create_model`` with errors turned into ConfigErrors that name the arch and the kwarg."""
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=0, **create_kw)
    except TypeError as err:
        bad = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if not bad:
            raise _build_failed(arch, create_kw, err) from err
        name = bad.group(1)
        if name == "img_size" and not is_vit and img_size is not None:
            # a convolutional net takes any input size: record img_size, do not pass it
            create_kw = {k: v for k, v in create_kw.items() if k != "img_size"}
            return _create(timm, arch, pretrained, create_kw, entry_module, None, is_vit)
        valid = _accepted_kwargs(str(err), entry_module)
        raise ConfigError(
            f"encoder arch '{arch}' does not take the kwarg '{name}'"
            + did_you_mean(name, valid)
            + (f" ({_class_name(err)} accepts: {', '.join(valid)})" if valid else "")
        ) from err
    except (ValueError, AssertionError, IndexError, RuntimeError) as err:
        if not create_kw:
            raise
        raise _build_failed(arch, create_kw, err) from err


def _class_name(err: Exception) -> str:
    match = re.match(r"\s*([\w.]+?)(?:\.__init__)?\(\)", str(err))
    return match.group(1) if match else "it"


def _build_failed(arch: str, create_kw: dict, err: Exception) -> ConfigError:
    shown = ", ".join(f"{k}={v!r}" for k, v in create_kw.items())
    return ConfigError(f"timm could not build encoder arch '{arch}' with {shown}: {type(err).__name__}: {err}")


def _accepted_kwargs(message: str, entry_module: str) -> list[str]:
    """The keyword names of the class named in timm's TypeError ("ResNet.__init__() got ...")."""
    match = re.match(r"\s*(\w+)\.__init__\(\)", message)
    cls = getattr(sys.modules.get(entry_module), match.group(1), None) if match else None
    if not isinstance(cls, type):
        return []
    skip = {"self", "num_classes", "device", "dtype"}
    params = inspect.signature(cls.__init__).parameters.values()
    return sorted(
        p.name for p in params if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _is_resnet_like(backbone: nn.Module) -> bool:
    return all(isinstance(getattr(backbone, name, None), nn.Module) for name in ("conv1", "bn1", "maxpool")) and hasattr(
        backbone.bn1, "num_features"
    )


def _first_conv(module: nn.Module) -> nn.Conv2d:
    if isinstance(module, nn.Conv2d):
        return module
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub
    raise ConfigError(f"cannot find the first convolution of the stem {type(module).__name__}")


def _replace_resnet_stem(backbone: nn.Module) -> None:
    """conv1 -> 3x3 stride-1 conv (in_chans -> bn1 width, no bias); maxpool -> identity."""
    old = _first_conv(backbone.conv1)
    conv = nn.Conv2d(
        old.in_channels, backbone.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as timm inits ResNet convs
    backbone.conv1 = conv
    backbone.maxpool = nn.Identity()
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, dict) and "first_conv" in cfg:
        backbone.pretrained_cfg = {**cfg, "first_conv": "conv1"}


def _replace_resnetv2_stem(backbone: nn.Module) -> None:
    """stem -> one 3x3 stride-1 conv (in_chans -> the stem's width, no bias) and no pooling, as ``stem.conv``
    and ``stem.pool`` (timm's names for its plain stem)."""
    convs = [m for m in backbone.stem.modules() if isinstance(m, nn.Conv2d)]
    first, last = convs[0], convs[-1]
    conv = nn.Conv2d(first.in_channels, last.out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                     device=first.weight.device, dtype=first.weight.dtype)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    backbone.stem = nn.Sequential()
    backbone.stem.add_module("conv", conv)
    backbone.stem.add_module("pool", nn.Identity())


def _vit_img_size(backbone: nn.Module, img_size: int | None) -> int | None:
    size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return img_size


def _jsonable(value: Any, what: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, what) for k, v in value.items()}
    raise InfoviewError(
        f"{what} = {value!r} cannot be written to a JSON config; pass it by name "
        "(timm takes strings such as act_layer='gelu', norm_layer='layernorm')"
    )
