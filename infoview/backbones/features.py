"""Frozen features for evaluation: run an encoder once over a loader, keep the result.

Why cache features: the linear probe trains for ~100 epochs and the kNN
monitor runs every few pretraining epochs, but the encoder is frozen in both.
Running it once per split and keeping (N, D) float32 features on the CPU makes
every later epoch a matter of small matrix products, and lets one set of
features serve both evaluations.

The loader is anything that yields ``(images, labels)`` the way
``infoview.data.build_loader`` does: uint8 images (B, 3, H, W), possibly
already on the device, and int64 labels (B,). Images are turned into floats in
[0, 1] and normalised with the caller's per-channel mean and std (the ones the
encoder was pretrained with, e.g. ``infoview.augment.recipes.normalization``),
so the encoder sees exactly what the augmentation pipeline fed it, minus the
randomness.

The encoder runs in eval mode (BatchNorm uses its running statistics, dropout
is off); each submodule's own train/eval flag is put back afterwards, also
when the encoder raises.

``check_features`` is the shared gate for cached features: kNN and the linear
probe both call it, so the same mistakes get the same message.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from infoview.errors import InfoviewError
from infoview.utils.device import resolve_device


def encoder_device_dtype(encoder: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the encoder's first floating parameter (or buffer)."""
    for tensor in list(encoder.parameters()) + list(encoder.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode for the block; every submodule gets its own mode back afterwards, even on error."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def _channel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    try:
        m = [float(v) for v in mean]
        s = [float(v) for v in std]
    except (TypeError, ValueError):
        raise InfoviewError(f"mean and std must be sequences of numbers, got mean={mean!r}, std={std!r}") from None
    if len(m) != len(s) or not m:
        raise InfoviewError(f"mean and std need one value per channel, got {len(m)} and {len(s)} values")
    if any(not math.isfinite(v) for v in m) or any(not math.isfinite(v) or v <= 0 for v in s):
        raise InfoviewError(f"mean must be finite and std positive, got mean={tuple(m)}, std={tuple(s)}")
    return m, s


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader,
    mean: Sequence[float],
    std: Sequence[float],
    device=None,
    progress: bool = False,
    desc: str = "features",
    max_images: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Features (N, D) float32 and labels (N,) int64, both on the CPU, in loader order.

    ``device``: where the batches go and the encoder runs; by default the
    device the encoder's parameters live on (the encoder is never moved).
    Inputs are cast to the encoder's parameter dtype, so bf16/fp16 encoders
    work; their outputs come back as float32. ``max_images`` stops after that
    many images (the last batch is cut short). The encoder must return one
    (B, D) tensor per batch: pool feature maps first (timm: ``num_classes=0``).
    """
    if max_images is not None and (not isinstance(max_images, numbers.Integral) or isinstance(max_images, bool)
                                   or max_images < 1):
        raise InfoviewError(f"max_images must be a positive integer or None, got {max_images!r}")
    m, s = _channel_stats(mean, std)
    param_device, param_dtype = encoder_device_dtype(encoder)
    target = resolve_device(device) if device is not None else param_device
    in_dtype = param_dtype if param_dtype is not None else torch.float32
    try:
        total = len(loader)
    except TypeError:
        total = None
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    seen = 0
    stats: dict[torch.device, tuple[Tensor, Tensor]] = {}
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True, leave=False)
    with eval_mode(encoder), bar:
        for index, batch in enumerate(loader):
            images, targets = _checked_batch(index, batch, len(m))
            if max_images is not None and seen + images.shape[0] > max_images:
                keep = max_images - seen
                images, targets = images[:keep], targets[:keep]
            dev = target if target is not None else images.device
            if dev not in stats:
                stats[dev] = (
                    torch.tensor(m, dtype=torch.float32, device=dev).view(1, -1, 1, 1),
                    torch.tensor(s, dtype=torch.float32, device=dev).view(1, -1, 1, 1),
                )
            mu, sigma = stats[dev]
            x = images.to(dev, non_blocking=True).float().div_(255.0).sub_(mu).div_(sigma)
            out = encoder(x.to(in_dtype))
            _check_output(out, x.shape[0])
            feats.append(out.float().cpu())
            labels.append(targets.to(device="cpu", dtype=torch.int64))
            seen += x.shape[0]
            bar.update(1)
            if max_images is not None and seen >= max_images:
                break

    if not feats:
        raise InfoviewError(f"{desc}: the loader yielded no images; expected at least one batch")
    return torch.cat(feats), torch.cat(labels)


def _checked_batch(index: int, batch, channels: int) -> tuple[Tensor, Tensor]:
    """``(uint8 images (B, C, H, W), labels (B,))`` from the loader's batch ``index``, or an error naming it."""
    try:
        images, targets = batch
    except (TypeError, ValueError):
        raise InfoviewError(
            f"the loader must yield (images, labels) pairs; batch {index} is a {type(batch).__name__}"
        ) from None
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        what = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) \
            else type(images).__name__
        raise InfoviewError(f"batch {index}: expected uint8 images (B, C, H, W), got a {what}")
    if images.shape[1] != channels:
        raise InfoviewError(
            f"batch {index}: images have {images.shape[1]} channels but mean/std give {channels}"
        )
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.shape[0] != images.shape[0]:
        raise InfoviewError(
            f"batch {index}: expected {images.shape[0]} labels (B,), got shape {tuple(targets.shape)}"
        )
    return images, targets


def _check_output(out, n: int) -> None:
    """The encoder's output must be one (n, D) tensor."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise InfoviewError(
            f"the encoder must return features ({n}, D) for a batch of {n}, got {what}; "
            "pool feature maps first (timm: num_classes=0)"
        )


def check_features(feats, labels, name: str, needed_by: str = "this evaluation") -> tuple[Tensor, Tensor]:
    """Validate a cached split: (N, D) finite features and (N,) labels >= 0.

    Returns float32 features and int64 labels on the features' device. A label
    below 0 (sources mark unlabelled images with -1) is an error naming
    ``needed_by``: kNN and the linear probe both need a class for every sample.
    """
    feats = torch.as_tensor(feats)
    labels = torch.as_tensor(labels)
    if feats.dim() != 2:
        raise InfoviewError(f"{name} features must be (N, D), got shape {tuple(feats.shape)}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise InfoviewError(f"{name} features are empty (shape {tuple(feats.shape)}); expected at least one sample")
    if not (feats.is_floating_point() or feats.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise InfoviewError(f"{name} features must be numbers, got dtype {feats.dtype}")
    feats = feats.float()
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise InfoviewError(
            f"{name} has {feats.shape[0]} feature rows but labels of shape {tuple(labels.shape)}; "
            f"expected ({feats.shape[0]},)"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InfoviewError(f"{name} labels must be integers, got dtype {labels.dtype}")
    labels = labels.to(device=feats.device, dtype=torch.int64)
    if not torch.isfinite(feats).all():
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        raise InfoviewError(f"{name} features contain NaN or inf in {bad} of {feats.shape[0]} rows")
    if bool((labels < 0).any()):
        bad = int((labels < 0).sum())
        raise InfoviewError(
            f"{name} has {bad} samples labelled {int(labels.min())} (unlabelled); "
            f"{needed_by} needs labels: a class >= 0 for every sample"
        )
    return feats, labels
