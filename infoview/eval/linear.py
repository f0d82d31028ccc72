"""Linear evaluation on frozen, cached features: the standard score of a pretrained encoder.

Why a linear probe: it measures how much of the label information the
representation makes linearly accessible, which is what the MI objectives aim
at and what the SimCLR / MoCo papers report. Training only a linear layer on
features extracted once (``infoview.backbones.features.extract_features``) takes
seconds to minutes instead of the hours of running the encoder every epoch;
the price is no augmentation during the probe, which the fast linear-probe
protocols accept. ``train_linear_probe_augmented`` is the other protocol
(SimCLR's and MoCo's papers): every epoch the frozen encoder sees fresh random
crops and flips of the train images and the layer trains on those features,
with the same optimiser, schedule and scoring (``infoview linear
augment=true``); it costs one encoder pass per image per epoch.

The protocol:

- features are standardised with the train split's per-dimension mean and
  standard deviation (``normalize="standardize"``), as the protocols that put
  a ``BatchNorm1d(affine=False)`` before the linear layer do (MAE, solo-learn);
  the same eps (1e-5) is added to the variance. ``normalize="none"`` keeps the
  features as they are;
- one ``nn.Linear(D, num_classes)``, weights drawn from N(0, 0.01^2), bias 0;
- SGD with momentum on the cross-entropy, minibatches of ``batch_size`` drawn
  in a fresh random order every epoch (the last, smaller batch is kept);
- the learning rate peaks at ``lr * batch_size / 256`` (the linear scaling
  rule: ``lr`` is the value at batch size 256) and follows a cosine to 0 over
  all steps.

Every random draw (initial weights, batch order) comes from one
``torch.Generator`` seeded by ``seed``, and the global RNG is never touched, so
on the CPU a given seed gives the same result to the last digit.

``fit_linear`` returns the trained layer with the standardisation folded into
its weights (W / std, b - W mean / std), so it applies to raw features;
``train_linear_probe`` runs the same training and reports JSON-able accuracies.
"""
from __future__ import annotations

import inspect
import json
import math
import numbers

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from infoview.augment import build_views
from infoview.backbones.features import check_features, encoder_device_dtype, eval_mode
from infoview.backbones.spec import default_out_dir, frozen_splits
from infoview.config import save_config
from infoview.data import build_loader
from infoview.errors import ConfigError, InfoviewError
from infoview.training.components import epochs_of
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import fit
from infoview.training.memory import out_of_memory_said
from infoview.training.optim import cosine_factor
from infoview.utils.device import resolve_device
from infoview.utils.io import atomic_write_text
from infoview.utils.lock import hold_result_folder

NORMALIZE = ("standardize", "none")
BN_EPS = 1e-5


def _check_settings(epochs, batch_size, lr, weight_decay, momentum, normalize) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    for name, value, ok, expected in (
        ("lr", lr, lambda v: v > 0, "> 0"),
        ("weight_decay", weight_decay, lambda v: v >= 0, ">= 0"),
        ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{name} must be a finite number {expected}, got {value!r}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")


def _resolve_num_classes(num_classes, *label_sets: Tensor) -> int:
    largest = max(int(labels.max()) for labels in label_sets)
    if num_classes is None:
        return largest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise InfoviewError(f"num_classes must be a positive integer, got {num_classes!r}")
    if largest >= num_classes:
        raise InfoviewError(f"labels go up to {largest} but num_classes={num_classes}; expected labels < {num_classes}")
    return int(num_classes)


def _standardizer(x: Tensor, normalize: str) -> tuple[Tensor | None, Tensor | None]:
    """The train split's per-dimension mean and std (BatchNorm's eps), or (None, None)."""
    if normalize != "standardize":
        return None, None
    return x.mean(dim=0), torch.sqrt(x.var(dim=0, unbiased=False) + BN_EPS)


def _new_layer(dim: int, num_classes: int, gen: torch.Generator, device) -> nn.Linear:
    """``nn.Linear`` with N(0, 0.01^2) weights from ``gen`` and zero bias (the global RNG untouched)."""
    layer = torch.nn.utils.skip_init(nn.Linear, dim, num_classes, device=device)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(num_classes, dim, generator=gen) * 0.01)
        layer.bias.zero_()
    return layer


def _sgd_cosine(layer: nn.Linear, epoch_batches, *, epochs, steps_per_epoch, batch_size, lr, weight_decay, momentum,
                progress, desc="linear probe", features=None, checkpoint: FitCheckpoint | None = None,
                rngs=None) -> nn.Linear:
    """Train ``layer`` on the (features, labels) minibatches ``epoch_batches(epoch)`` yields, once per epoch.

    SGD with momentum on the cross-entropy; the learning rate peaks at
    ``lr * batch_size / 256`` and follows a cosine to 0 over
    ``epochs * steps_per_epoch`` steps. The shared fit loop (training.loop)
    runs the epochs. ``features(batch)``: the (features, labels) of a batch,
    when the batches are something else (images). ``checkpoint``: the run
    goes on from it and saves there when a signal stops it (``rngs``: the
    generators the batches draw from). Returns the layer, frozen.
    """
    peak = float(lr) * batch_size / 256
    opt = torch.optim.SGD(layer.parameters(), lr=peak, momentum=float(momentum), weight_decay=float(weight_decay))
    total = max(1, epochs * steps_per_epoch)

    def step(batch):
        feats, labels = batch if features is None else features(batch)
        return F.cross_entropy(layer(feats), labels)

    fit(step, opt, epoch_batches, epochs=epochs, steps_per_epoch=steps_per_epoch,
        schedule=lambda s: cosine_factor(s, total), progress=progress, desc=desc, hint="lower the probe's lr",
        checkpoint=checkpoint.track({"layer": layer}, rngs) if checkpoint is not None else None)
    return layer.requires_grad_(False)


def _fit(x: Tensor, y: Tensor, num_classes: int, *, epochs, batch_size, lr, weight_decay, momentum, seed,
         normalize, progress, checkpoint=None) -> tuple[nn.Linear, Tensor | None, Tensor | None]:
    """The training loop on checked features; returns (layer on standardised features, mean, std)."""
    n, dim = x.shape
    mean, std = _standardizer(x, normalize)
    if mean is not None:
        x = (x - mean) / std

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    layer = _new_layer(dim, num_classes, gen, x.device)

    def batches(epoch, first=0):  # a fresh random order every epoch, drawn from gen as the epoch begins
        order = torch.randperm(n, generator=gen).to(x.device)
        return ((x[idx], y[idx]) for idx in order[first * batch_size:].split(batch_size))

    layer = _sgd_cosine(layer, epochs_of(batches), epochs=epochs, steps_per_epoch=-(-n // batch_size),
                        batch_size=batch_size, lr=lr, weight_decay=weight_decay, momentum=momentum,
                        progress=progress, checkpoint=checkpoint, rngs={"order": gen})
    return layer, mean, std


def fit_linear(
    train_feats: Tensor,
    train_labels: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    device="cpu",
    normalize: str = "standardize",
    progress: bool = False,
) -> nn.Linear:
    """Train the probe on (N, D) features; returns an ``nn.Linear`` for raw features, on ``device``.

    See the module docstring for the protocol; the standardisation is folded
    into the returned layer. ``num_classes=None`` takes the largest train
    label plus one.
    """
    _check_settings(epochs, batch_size, lr, weight_decay, momentum, normalize)
    x, y = check_features(train_feats, train_labels, "linear probe train", needed_by="the linear probe")
    num_classes = _resolve_num_classes(num_classes, y)
    device = resolve_device(device)
    layer, mean, std = _fit(
        x.to(device), y.to(device), num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, momentum=momentum, seed=seed, normalize=normalize, progress=progress,
    )
    if mean is not None:  # W (x - mean) / std + b  ==  (W / std) x + (b - (W / std) mean)
        with torch.no_grad():
            weight = layer.weight / std
            layer.bias.sub_(weight @ mean)
            layer.weight.copy_(weight)
    return layer


@torch.no_grad()
def _accuracy(layer: nn.Linear, feats: Tensor, labels: Tensor, topk: int, chunk: int = 8192) -> float:
    correct = 0
    for start in range(0, feats.shape[0], chunk):
        logits = layer(feats[start : start + chunk])
        hits = logits.topk(topk, dim=1).indices == labels[start : start + chunk, None]
        correct += int(hits.any(dim=1).sum())
    return 100.0 * correct / feats.shape[0]


def train_linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    device="cpu",
    normalize: str = "standardize",
    progress: bool = False,
    checkpoint: FitCheckpoint | None = None,
) -> dict:
    """Fit a linear probe on the train features, report accuracies in percent.

    ``num_classes=None`` takes the largest label of either split plus one.
    Returns ``{"top1", "top5" (only with >= 5 classes), "train_top1", "epochs",
    "lr", "batch_size", "weight_decay", "normalize", "num_classes",
    "num_train", "num_test"}``; ``lr`` is the value given (at batch size 256).
    ``checkpoint`` (a ``training.fit_state.FitCheckpoint``): the training goes
    on from it, and saves there when Ctrl-C or SIGTERM stops it.
    """
    _check_settings(epochs, batch_size, lr, weight_decay, momentum, normalize)
    device = resolve_device(device)
    x, y, xt, yt, num_classes = _checked_splits(train_feats, train_labels, test_feats, test_labels, num_classes,
                                                device)
    layer, mean, std = _fit(
        x, y, num_classes, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        momentum=momentum, seed=seed, normalize=normalize, progress=progress, checkpoint=checkpoint,
    )
    return _report(layer, mean, std, x, y, xt, yt, num_classes, epochs=int(epochs), lr=float(lr),
                   batch_size=int(batch_size), weight_decay=float(weight_decay), normalize=normalize)


def _checked_splits(train_feats, train_labels, test_feats, test_labels, num_classes, device):
    x, y = check_features(train_feats, train_labels, "linear probe train", needed_by="the linear probe")
    xt, yt = check_features(test_feats, test_labels, "linear probe test", needed_by="the linear probe's accuracy")
    if xt.shape[1] != x.shape[1]:
        raise InfoviewError(
            f"train features have {x.shape[1]} dimensions but test features {xt.shape[1]}; expected the same"
        )
    num_classes = _resolve_num_classes(num_classes, y, yt)
    return x.to(device), y.to(device), xt.to(device), yt.to(device), num_classes


def _report(layer, mean, std, x, y, xt, yt, num_classes, **settings) -> dict:
    """Top-1 (top-5 with >= 5 classes) on the test split, train top-1, then ``settings`` and the counts."""
    if mean is not None:  # score in the space the layer was trained in
        x, xt = (x - mean) / std, (xt - mean) / std
    result = {"top1": _accuracy(layer, xt, yt, 1)}
    if num_classes >= 5:
        result["top5"] = _accuracy(layer, xt, yt, 5)
    result.update(train_top1=_accuracy(layer, x, y, 1), **settings, num_classes=num_classes,
                  num_train=int(x.shape[0]), num_test=int(xt.shape[0]))
    return result


def train_linear_probe_augmented(
    encoder: nn.Module,
    loader,
    views,
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    device="cpu",
    normalize: str = "standardize",
    progress: bool = False,
    checkpoint: FitCheckpoint | None = None,
) -> dict:
    """The linear probe trained on augmented views of the train images, through the frozen encoder.

    Each epoch, every batch ``(uint8 images, labels)`` of ``loader`` (the
    train split, shuffled; its batch size should be ``batch_size``, which sets
    the learning rate) becomes one random view ``views(images)[0]`` (e.g. a
    random resized crop + flip from ``infoview.augment.build_views``), the
    encoder (eval mode, no gradient; it must already be on ``device``) turns
    it into features, and the layer takes one SGD step on them: the same
    optimiser, learning-rate rule and cosine schedule as the cached-feature
    probe. ``train_feats`` / ``test_feats`` are the un-augmented features of
    the two splits: the standardisation comes from the train ones, and
    ``top1`` / ``top5`` are scored on the test ones (centre views).
    ``train_top1`` is scored on the un-augmented train features. Returns the
    keys of :func:`train_linear_probe` plus ``"augment": True``. ``checkpoint``:
    as for :func:`train_linear_probe` (the views' random state saved too).
    """
    _check_settings(epochs, batch_size, lr, weight_decay, momentum, normalize)
    device = resolve_device(device)
    x, y, xt, yt, num_classes = _checked_splits(train_feats, train_labels, test_feats, test_labels, num_classes,
                                                device)
    try:
        steps = len(loader)
    except TypeError:
        steps = -(-x.shape[0] // batch_size)
    mean, std = _standardizer(x, normalize)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    layer = _new_layer(x.shape[1], num_classes, gen, device)
    in_dtype = encoder_device_dtype(encoder)[1] or torch.float32

    def batches(epoch, start=0):
        if hasattr(loader, "set_epoch"):  # (the epoch it would read next anyway; a resumed run's too)
            loader.set_epoch(epoch, start_batch=start) if start else loader.set_epoch(epoch)
        return ((index, images, labels) for index, (images, labels) in enumerate(iter(loader), start))

    def features(batch):  # in the step: a plain iterable's resumed run reads the batches it drops, unencoded
        index, images, labels = batch
        with torch.no_grad():
            view = views(images.to(device, non_blocking=True))[0]
            feats = encoder(view.to(in_dtype)).float()
            if feats.dim() != 2 or feats.shape[1] != x.shape[1]:
                raise InfoviewError(
                    f"augmented batch {index}: the encoder returned shape {tuple(feats.shape)}; expected "
                    f"(B, {x.shape[1]}) like the cached train features"
                )
            if mean is not None:
                feats = (feats - mean) / std
        labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64)
        if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
            raise InfoviewError(f"augmented batch {index}: labels must lie in [0, {num_classes}), got "
                                f"{int(labels.min())}..{int(labels.max())}")
        return feats, labels

    with eval_mode(encoder):
        starts = "start_batch" in inspect.signature(getattr(loader, "set_epoch", len)).parameters  # infoview's
        layer = _sgd_cosine(layer, epochs_of(batches) if starts else batches, epochs=epochs, steps_per_epoch=steps,
                            batch_size=batch_size, lr=lr, weight_decay=weight_decay, momentum=momentum,
                            progress=progress, desc="linear probe (augmented)", features=features,
                            checkpoint=checkpoint, rngs={"order": gen, "views": views})
    return _report(layer, mean, std, x, y, xt, yt, num_classes, epochs=int(epochs), lr=float(lr),
                   batch_size=int(batch_size), weight_decay=float(weight_decay), normalize=normalize, augment=True)


# --------------------------------------------------------------------------- `infoview linear`

#: augment=true: SimCLR's crop (scale 0.08-1) and flip, every colour op and blur off
PROBE_VIEW_OVERRIDES = {"jitter.p": 0.0, "grayscale.p": 0.0, "blur.p": 0.0, "solarize.p": 0.0}


def run(cfg) -> dict:
    t, o = cfg.train, cfg.optim
    _check_settings(t.epochs, t.batch_size, o.lr, o.weight_decay, 0.9, "standardize")  # before any extraction
    with hold_result_folder(cfg.out_dir or default_out_dir(cfg.backbone, "linear"), "linear.json", cfg.overwrite,
                            "linear") as out:
        checkpoint = FitCheckpoint(out / "checkpoints", settings=OmegaConf.to_container(cfg, resolve=True),
                                   command="linear")  # a stopped run's, checked before any extraction
        with out_of_memory_said(f"data.batch_size={cfg.data.batch_size} images per batch of the frozen encoder and "
                                f"train.batch_size={t.batch_size} for the classifier",
                                "data.batch_size or train.batch_size"):
            return _run(cfg, out, checkpoint)


def _run(cfg, out, checkpoint: FitCheckpoint) -> dict:
    t = cfg.train
    bb, device, (xtr, ytr), (xte, yte), (source, test_source) = frozen_splits(cfg, "linear")
    d = cfg.data
    settings = dict(epochs=t.epochs, batch_size=t.batch_size, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                    seed=t.seed, device=device, progress=t.progress, checkpoint=checkpoint)
    if cfg.augment:
        views = build_views("simclr", bb.size, num_views=1, seed=t.seed, normalize=bb.normalize,
                            overrides=PROBE_VIEW_OVERRIDES)
        loader = build_loader(source, t.batch_size, split=d.train_split, seed=t.seed, shuffle=True,
                              drop_last=False, device=device, num_workers=d.num_workers, resolution=bb.size,
                              backend=d.backend)
        result = train_linear_probe_augmented(bb.encoder, loader, views, xtr, ytr, xte, yte, **settings)
    else:
        result = {**train_linear_probe(xtr, ytr, xte, yte, **settings), "augment": False}
    result = {"backbone": bb.description, "data": source, "test_data": test_source, "feature_dim": int(xtr.shape[1]),
              **result, "out_dir": str(out)}
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "linear.json", json.dumps(result, indent=2))
    checkpoint.remove()  # a way back into an unfinished run only
    return result
