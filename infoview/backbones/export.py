"""Backbone exports: writing a checkpoint's encoder as model.safetensors + config.json, and reading one back.

The format and its keys: infoview.commands.export (``infoview export --help``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from infoview.augment.recipes import normalization
from infoview.backbones.encoder import encoder_from_checkpoint, resolve_checkpoint
from infoview.config import did_you_mean
from infoview.errors import ConfigError, InfoviewError
from infoview.models.encoder import architecture_kwargs, build_encoder, is_vit_arch
from infoview.utils.io import atomic_path, atomic_write_text
from infoview.utils.lock import LOCK_NAME, hold_folder
from infoview.utils.provenance import provenance

FORMATS = ("timm", "torchvision")
EXPORT_FORMAT = "infoview-backbone-1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
#: timm archs whose ResNet has a torchvision twin with the same key names and shapes
TORCHVISION_RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
#: keys of torchvision's ResNet that a backbone (num_classes=0) has no counterpart for
TORCHVISION_HEAD = ("fc.weight", "fc.bias")
LAB_NOTE = (
    "model.streams=lab: two timm models, one on the L channel of CIELab (l.*, in_chans=1) and one on ab (ab.*, "
    "in_chans=2), behind an RGB -> Lab conversion; load it with infoview.load_backbone(dir)"
)
CIFAR_STEM_NOTE = (
    "cifar_stem=true replaced the ResNet stem (conv1: one 3x3 stride-1 conv, max-pool: identity), which "
    "timm.create_model cannot rebuild from kwargs; load it with infoview.load_backbone(dir)"
)


# --------------------------------------------------------------------------- export


def export_backbone(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "timm",  # noqa: A002 - the CLI key's name
    overwrite: bool = False,
) -> dict:
    """Write ``OUT_DIR/model.safetensors`` and ``OUT_DIR/config.json``; return a summary.

    See the module docstring. Returns ``{"out_dir", "weights", "config",
    "format", "arch", "feature_dim", "num_tensors", "num_elements", "step",
    "plain_timm_loadable", "sha256"}``.
    """
    out = _check_out_dir(out_dir, format, overwrite)
    with hold_folder(out, "export"):  # one export into a folder at once; a failed one leaves no empty folder
        fresh = not (out / WEIGHTS).exists()
        try:
            return _export(ckpt_path, out, format)
        except BaseException:
            if fresh:  # weights without their config.json are no export (an overwritten one: its sha256 says so)
                (out / WEIGHTS).unlink(missing_ok=True)
            raise


def _export(ckpt_path: str | os.PathLike, out: Path, format: str) -> dict:  # noqa: A002
    ckpt = resolve_checkpoint(ckpt_path)
    encoder, state = encoder_from_checkpoint(ckpt, trained=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in encoder.backbone.state_dict().items()}
    config, weights = _export_config(encoder, state["config"], format, weights)
    digest = _write_weights(out / WEIGHTS, weights, format, encoder.arch)
    num_params = int(sum(v.numel() for k, v in weights.items() if v.is_floating_point()))
    config.update(
        weights={"file": WEIGHTS, "sha256": digest, "num_tensors": len(weights), "num_elements": num_params},
        pretrain_config=state["config"],
        metrics=_plain(state.get("metrics") or {}),
        source={"checkpoint": str(ckpt.resolve()), "step": int(state["step"]), "epoch": _plain(state.get("epoch"))},
        pretrain_provenance=state.get("provenance"),
        provenance=provenance(),
    )
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2, default=str) + "\n")
    return {
        "out_dir": str(out),
        "weights": str(out / WEIGHTS),
        "config": str(out / CONFIG),
        "format": format,
        "arch": encoder.arch,
        "feature_dim": encoder.feature_dim,
        "num_tensors": len(weights),
        "num_elements": num_params,
        "step": int(state["step"]),
        "plain_timm_loadable": config["plain_timm_loadable"],
        "sha256": digest,
    }


def _check_out_dir(out_dir: str | os.PathLike, format: str, overwrite: bool) -> Path:  # noqa: A002
    """The export folder, checked with the format before anything is loaded: new, empty, or ``overwrite``."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'" + did_you_mean(str(format), FORMATS)
                          + f" Formats: {', '.join(FORMATS)}")
    out = Path(out_dir)
    if not str(out_dir).strip():
        raise InfoviewError("export needs an output folder (OUT_DIR)")
    if out.exists() and not out.is_dir():
        raise InfoviewError(f"export folder {out} is a file; expected a folder (new or empty)")
    if out.is_dir() and not overwrite:
        held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise InfoviewError(
                f"export folder {out} is not empty (holds {shown}); pass overwrite=true to replace "
                f"{WEIGHTS} and {CONFIG} there, or choose a new folder"
            )
    return out


def _export_config(encoder, pretrain_cfg: dict, format: str, weights: dict) -> tuple[dict, dict]:  # noqa: A002
    """config.json but its weights and provenance, and the weights to write (torchvision's names for that format)."""
    timm_kwargs, loadable, note = _plain_timm(encoder, weights)
    size = int(pretrain_cfg["augment"]["size"])
    preset = pretrain_cfg["augment"].get("normalize") or "imagenet"
    mean, std = normalization(preset, None, None)
    config: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "weights_format": format,
        "arch": encoder.arch,
        "cifar_stem": encoder.cifar_stem,
        "img_size": encoder.img_size,
        "kwargs": encoder.config["kwargs"],
        "streams": getattr(encoder, "streams", "rgb"),
        "timm_kwargs": timm_kwargs,
        "feature_dim": encoder.feature_dim,
        "input_size": [3, size, size],
        "normalize": preset,
        "mean": list(mean),
        "std": list(std),
        "plain_timm_loadable": loadable,
    }
    if note:
        config["plain_timm_note"] = note
    if format == "timm":
        timm_cfg = getattr(encoder.backbone, "pretrained_cfg", None) or {}
        config["pretrained_cfg"] = {
            "input_size": [3, size, size],
            "mean": list(mean),
            "std": list(std),
            "num_classes": 0,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            **{k: timm_cfg[k] for k in ("first_conv", "classifier") if timm_cfg.get(k)},
        }
    else:
        tv_name, weights = to_torchvision(encoder, weights)
        config["torchvision"] = {
            "builder": f"torchvision.models.{tv_name}",
            "missing_keys": list(TORCHVISION_HEAD),
            "usage": f"torchvision.models.{tv_name}().load_state_dict(safetensors.torch.load_file(path), "
                     "strict=False) leaves only fc.* missing; set model.fc = torch.nn.Identity() for features",
        }
    return config, weights


def _write_weights(path: Path, weights: dict, format: str, arch: str) -> str:  # noqa: A002
    """``weights`` as safetensors at ``path`` (atomically); returns the file's sha256."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "infoview": EXPORT_FORMAT, "weights_format": format,
                                               "arch": arch})
        digest = _sha256(tmp)
    return digest


def _plain(value):
    """Tensors and numpy scalars in metrics as plain numbers."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_model(timm, arch: str, kwargs: dict):
    """``timm.create_model(arch, num_classes=0, **kwargs)`` without allocating (CPU if meta fails)."""
    try:
        with torch.device("meta"):
            return timm.create_model(arch, num_classes=0, **kwargs)
    except (RuntimeError, NotImplementedError):
        return timm.create_model(arch, num_classes=0, **kwargs)


def _plain_timm(encoder, weights: dict) -> tuple[dict, bool, str]:
    """The kwargs plain timm needs, whether its model takes these weights, and why not."""
    import timm

    kwargs = dict(encoder.config["kwargs"])
    if getattr(encoder, "streams", "rgb") != "rgb":
        return kwargs, False, LAB_NOTE
    is_vit = is_vit_arch(encoder.arch)
    if is_vit and encoder.cifar_stem:
        kwargs.setdefault("patch_size", 4)
    if encoder.img_size is not None:
        kwargs["img_size"] = encoder.img_size
    try:
        reference = _meta_model(timm, encoder.arch, kwargs)
    except TypeError as err:  # a convolutional net takes any size: img_size is recorded only
        if "img_size" not in str(err):
            raise
        kwargs.pop("img_size")
        reference = _meta_model(timm, encoder.arch, kwargs)
    if encoder.cifar_stem and not is_vit:
        return kwargs, False, CIFAR_STEM_NOTE
    theirs = reference.state_dict()
    missing = sorted(set(theirs) - set(weights))
    unexpected = sorted(set(weights) - set(theirs))
    shapes = [k for k in weights if k in theirs and tuple(theirs[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        what = "; ".join(
            f"{name} {keys[:3]}" for name, keys in
            (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if keys
        )
        return kwargs, False, (
            f"timm.create_model('{encoder.arch}', num_classes=0, **timm_kwargs) does not match these weights "
            f"({what}); load it with infoview.load_backbone(dir)"
        )
    return kwargs, True, ""


# --------------------------------------------------------------------------- torchvision


def _torchvision_reference(name: str) -> dict:
    import torchvision

    with torch.device("meta"):
        return getattr(torchvision.models, name)().state_dict()


def _torchvision_name(arch: str, cifar_stem: bool) -> str:
    if arch not in TORCHVISION_RESNETS:
        raise InfoviewError(
            f"format=torchvision is for ResNets ({', '.join(TORCHVISION_RESNETS)}); arch '{arch}' has no "
            "torchvision counterpart: export it with format=timm"
        )
    if cifar_stem:
        raise InfoviewError(
            f"format=torchvision: this {arch} has the CIFAR stem (conv1 3x3 stride 1, no max-pool), but "
            f"torchvision.models.{arch} has a 7x7 stride-2 conv1 and a max-pool: export it with format=timm "
            "and load it with infoview.load_backbone"
        )
    return arch


def _check_torchvision_fit(arch: str, name: str, weights: dict, kwargs: dict) -> None:
    ref = _torchvision_reference(name)
    missing = sorted(set(ref) - set(weights) - set(TORCHVISION_HEAD))
    unexpected = sorted(set(weights) - set(ref))
    shapes = [(k, tuple(v.shape), tuple(ref[k].shape)) for k, v in weights.items()
              if k in ref and tuple(v.shape) != tuple(ref[k].shape)]
    if shapes:
        key, ours, theirs = shapes[0]
        raise InfoviewError(
            f"format=torchvision: this {arch} does not fit torchvision.models.{name}, whose widths are fixed: "
            f"{key} is {ours} here but {theirs} there ({len(shapes)} tensors differ); it was built with "
            f"kwargs {kwargs} (a narrow timm ResNet has no torchvision twin): export it with format=timm"
        )
    if missing or unexpected:
        raise InfoviewError(
            f"format=torchvision: the {arch} weights do not fit torchvision.models.{name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); built with kwargs {kwargs}: "
            "export it with format=timm"
        )


def to_torchvision(encoder, weights: dict) -> tuple[str, dict]:
    """``(torchvision builder name, state dict with torchvision's key names)`` for a ResNet backbone.

    timm's ResNet keeps torchvision's module names (conv1, bn1, layer1.0.conv1,
    ..., downsample.0/1), so the keys carry over unchanged; what this checks is
    that every tensor exists in torchvision's model with the same shape, fc.*
    aside. Other archs, the CIFAR stem and non-standard widths are errors.
    """
    if getattr(encoder, "streams", "rgb") != "rgb":
        raise InfoviewError(f"format=torchvision: a model.streams={encoder.streams} encoder is two {encoder.arch}s "
                            "(L and ab) with no torchvision twin: export it with format=timm")
    name = _torchvision_name(encoder.arch, encoder.cifar_stem)
    _check_torchvision_fit(encoder.arch, name, weights, encoder.config["kwargs"])
    return name, dict(weights)


def from_torchvision(weights: dict) -> dict:
    """torchvision ResNet key names back to timm's (the same names: see :func:`to_torchvision`)."""
    return {k: v for k, v in weights.items() if k not in TORCHVISION_HEAD}


# --------------------------------------------------------------------------- load


def is_export_dir(path: str | os.PathLike) -> bool:
    """A folder holding an export's ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def read_export_config(export_dir: str | os.PathLike) -> dict:
    """The checked ``config.json`` of an export folder; errors name the folder and what is wrong."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise InfoviewError(f"export folder {folder} does not exist")
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise InfoviewError(
                f"{folder} is not a backbone export: {name} is missing (write one with `infoview export CKPT {folder}`)"
            )
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InfoviewError(f"{folder / CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise InfoviewError(f"{folder / CONFIG} is not an infoview backbone export (expected format={EXPORT_FORMAT!r})")
    return config


def load_export(export_dir: str | os.PathLike, verify: bool = True):
    """``(Encoder, config)``: the exported backbone wrapped as an :class:`~infoview.models.Encoder`.

    The weights load strictly; ``verify`` checks them against the sha256 in
    config.json first (a file replaced or cut short is an error, not a silent
    mismatch).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(export_dir)
    config = read_export_config(folder)
    weights_path = folder / WEIGHTS
    expected = (config.get("weights") or {}).get("sha256")
    if verify and expected and _sha256(weights_path) != expected:
        raise InfoviewError(
            f"{weights_path} does not match the sha256 in {folder / CONFIG}: the export is incomplete or was "
            "changed after it was written; export the checkpoint again"
        )
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InfoviewError(f"{weights_path} is not a readable safetensors file ({exc})") from None
    if config.get("weights_format") == "torchvision":
        weights = from_torchvision(weights)
    encoder = build_export_encoder(config, str(folder / CONFIG))
    try:
        encoder.backbone.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InfoviewError(
            f"{weights_path} does not fit {config['arch']} as config.json describes it: "
            + " ".join(line.strip() for line in first[:3])
        ) from None
    timm_cfg = getattr(encoder.backbone, "pretrained_cfg", None)
    if isinstance(timm_cfg, dict):  # so timm.data.resolve_data_config(model=...) sees the preprocessing
        encoder.backbone.pretrained_cfg = {
            **timm_cfg, "input_size": tuple(config["input_size"]), "mean": tuple(config["mean"]),
            "std": tuple(config["std"]), "num_classes": 0, "interpolation": "bilinear", "crop_pct": 1.0,
        }
    return encoder, config


def build_export_encoder(config: dict, where: str = CONFIG):
    """The architecture an export's config describes, at random init (the global RNG draws the weights).

    A ``streams=lab`` export (CMC's L and ab halves) takes the RGB input the config's mean and std describe.
    Its ``kwargs`` are data: only architecture keyword arguments are taken (``architecture_kwargs``; ``where``
    names the file in the error), so an export cannot make timm download weights or open a file."""
    kwargs = architecture_kwargs(config["arch"], config.get("kwargs") or {}, f"{where}: kwargs")
    streams = config.get("streams") or "rgb"  # exports written before model.streams are rgb
    if streams != "rgb":
        kwargs.update(streams=streams, input_mean=config["mean"], input_std=config["std"])
    return build_encoder(config["arch"], cifar_stem=bool(config["cifar_stem"]), img_size=config.get("img_size"),
                         **kwargs)


def load_backbone(export_dir: str | os.PathLike):
    """The exported backbone: a timm model (``num_classes=0``) with the exported weights, in eval mode.

    Works for every export, the CIFAR stem included, and for both weight
    formats. Its ``pretrained_cfg`` carries the input size and mean/std the
    encoder was pretrained with. Call ``.train()`` to fine-tune it.
    """
    encoder, _ = load_export(export_dir)
    return encoder.backbone.eval()
