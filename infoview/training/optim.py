"""Optimisers and learning-rate schedules: pretraining's and the evaluators'.

- ``sgd``, ``lars`` and ``adamw`` come from timm (``timm.optim.create_optimizer_v2``).
  Biases, normalisation parameters (every 1-d parameter) and the tokens a timm
  model lists in ``no_weight_decay()`` (a ViT's position embedding and class
  token) get no weight decay; timm's LARS also leaves those groups out of its
  trust-ratio adaptation, as SimCLR and BYOL do.
- The learning rate follows the **global** batch, whatever the number of
  processes: ``lr = optim.lr * scale(global_batch / optim.ref_batch)`` with
  ``optim.lr_scaling`` = ``linear`` (Goyal et al. 2017; SimCLR's
  0.3 x B / 256), ``sqrt`` (SimCLR's choice for LARS at small batches) or
  ``none``. ``data.batch_size`` is the global batch and each process takes an
  equal share, so a run on 2 nodes x 8 GPUs and one on 1 GPU with the same
  ``data.batch_size`` use the same learning rate and see batches of the same
  size per step.
- Schedule: linear warm-up from 0 over ``warmup_steps``, then a half cosine
  down to ``min_lr`` at ``total_steps``. It is a pure function of the step,
  so a resumed run continues on the same curve with nothing else to restore.
- The evaluators' schedules, also pure functions of the step: detection's
  (Detectron2's: linear warm-up from a fraction of the peak, then step decay
  or a half cosine; :func:`warmup_decay_factors`), segmentation's poly
  decay (:func:`poly_factor`) and the linear probe's cosine to 0
  (:func:`cosine_factor`). ``set_lr(optimizer, *factors)`` applies them;
  ``training.loop.fit`` calls it at every step.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from infoview.config import did_you_mean
from infoview.errors import ConfigError
from infoview.training.choices import DECAYS, FUSED, OPTIMIZERS, SCALING_RULES
WARMUP_START = 0.001  #: the lr at step 0 as a fraction of the peak (Detectron2's WarmupParamScheduler default)
POLY_POWER = 0.9  #: the exponent of the poly schedule (DeepLab's)


def scaled_lr(base_lr: float, global_batch: int, ref_batch: int = 256, rule: str = "linear") -> float:
    """The peak learning rate for ``global_batch``, from ``base_lr`` given for ``ref_batch``."""
    if rule not in SCALING_RULES:
        raise ConfigError(
            f"optim.lr_scaling '{rule}' is not a rule" + did_you_mean(rule, SCALING_RULES)
            + f" Rules: {', '.join(SCALING_RULES)}"
        )
    if global_batch < 1 or ref_batch < 1:
        raise ConfigError(f"batch sizes must be positive, got global {global_batch}, reference {ref_batch}")
    ratio = global_batch / ref_batch
    return float(base_lr) * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: warm-up 0 -> 1, then cosine 1 -> ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cut_schedule(warmup_steps: int, total_steps: int, full_steps: int, steps_per_epoch: int = 0,
                 anneal_epochs: float | None = None) -> tuple[int, str]:
    """``(warm-up steps, note)`` for a run of ``total_steps`` whose schedule is given for ``full_steps``
    (``train.epochs`` of ``steps_per_epoch``). When ``train.max_steps`` cuts the run short, the warm-up keeps
    its fraction of the run, so that the decay after it fits the run that happens, and ``note`` says so in
    one line (and that an objective's ``anneal_epochs``, which count epochs, are not cut); otherwise the
    warm-up is ``warmup_steps`` (at most the run). ``note`` is empty when nothing was cut. Without this, a
    preset's 10-epoch warm-up took the whole of a 150-step run, which ended at its peak learning rate."""
    if not 0 < total_steps < full_steps:
        return min(int(warmup_steps), int(total_steps)), ""
    warm = int(round(warmup_steps * total_steps / full_steps))
    said = []
    if warmup_steps > 0:
        said.append(f"the warm-up takes {warm} of its steps ({int(warmup_steps):,} in the full run) and the decay "
                    f"ends at step {total_steps}")
    if steps_per_epoch and anneal_epochs and float(anneal_epochs) > total_steps / steps_per_epoch:
        said.append(f"objective.anneal_epochs={float(anneal_epochs):g} counts epochs and is not cut (the run ends "
                    f"at epoch {total_steps / steps_per_epoch:.2f})")
    epochs = f", train.epochs={full_steps // steps_per_epoch}" if steps_per_epoch else ""
    return warm, (f"train.max_steps={total_steps} cuts the run of {full_steps:,} steps{epochs}: " + "; ".join(said)
                  if said else "")


def warmup_decay_factors(
    step: int,
    total_steps: int,
    warmup_steps: int,
    decay: str = "step",
    milestones: Iterable[float] = (),
    warmup_start: float = WARMUP_START,
    gamma: float = 0.1,
) -> tuple[float, float]:
    """Detectron2's schedule as two multipliers of the peak lr, ``(warm-up, decay)``: ``set_lr(opt, *factors)``.

    Warm-up: linear from ``warmup_start`` at step 0 to 1 at ``warmup_steps``
    (at most ``total_steps``). Decay: ``step`` multiplies by ``gamma`` at each
    of ``milestones`` (fractions of ``total_steps``); ``cosine`` is a half
    cosine from 1 after the warm-up to 0 at ``total_steps``.
    """
    if decay not in DECAYS:
        raise ConfigError(f"unknown lr decay '{decay}'" + did_you_mean(str(decay), DECAYS)
                          + f" Decays: {', '.join(DECAYS)}")
    warm = min(int(warmup_steps), total_steps)
    if step < warm:
        alpha = step / warm
        warmup = warmup_start * (1 - alpha) + alpha
    else:
        warmup = 1.0
    if decay == "cosine":
        span = max(total_steps - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return warmup, 0.5 * (1 + math.cos(math.pi * progress))
    drops = sum(step >= int(round(float(f) * total_steps)) for f in milestones)
    return warmup, gamma ** drops


def poly_factor(step: int, total_steps: int, power: float = POLY_POWER) -> float:
    """Multiplier of the peak lr at ``step``: ``(1 - step / total_steps) ** power``, 0 from ``total_steps`` on."""
    return (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power


def cosine_factor(step: int, total_steps: int) -> float:
    """Multiplier of the peak lr at ``step``: a half cosine from 1 at step 0 to 0 at ``total_steps`` (the linear probe's)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _no_decay_names(model: nn.Module) -> list[str]:
    """Full names of the parameters that timm models list in ``no_weight_decay()``."""
    names = []
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn) and not isinstance(module, torch.optim.Optimizer):
            try:
                listed = fn()
            except TypeError:
                continue
            names += [f"{prefix}.{n}" if prefix else n for n in listed]
    return names


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Iterable[float] = (0.9, 0.999),
    extra_groups: Iterable[dict] = (),
    exclude: Iterable[torch.Tensor] = (),
    nesterov: bool | None = None,
    no_decay: Iterable[str] | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """An optimiser over ``model``'s trainable parameters (plus ``extra_groups``).

    Every group gets a ``base_lr`` (its peak lr) that :func:`set_lr` scales
    step by step. Extra groups (the online probe) keep their own ``lr`` and
    ``weight_decay``; parameters in ``exclude`` are left out of ``model``'s groups.
    ``nesterov``: for ``sgd`` and ``lars``, None keeps timm's choice (Nesterov
    momentum), False is classical momentum. ``no_decay``: endings of parameter
    names that get no weight decay, in place of the names timm models list in
    ``no_weight_decay()`` (1-d parameters never get it either way); errors name
    the ``optim.*`` keys, every command's. ``fused``: torch's fused kernel for
    ``sgd`` and ``adamw`` (one launch for
    all parameters on a GPU, where a step is otherwise dozens of small ones);
    None leaves torch's default (its multi-tensor ``foreach`` path).
    """
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    if name not in OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer '{name}'" + did_you_mean(name, OPTIMIZERS) + f" Optimizers: {', '.join(OPTIMIZERS)}"
        )
    if not lr > 0:
        raise ConfigError(f"optim.lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {weight_decay}")
    skip = {id(p) for p in exclude}
    if no_decay is None:
        listed = _no_decay_names(model)
    else:
        endings = tuple(no_decay)
        listed = [n for n, _ in model.named_parameters() if n.endswith(endings)]
    groups = []
    for g in param_groups_weight_decay(model, weight_decay, no_weight_decay_list=listed):
        params = [p for p in g["params"] if id(p) not in skip]
        if params:
            groups.append({**g, "params": params, "lr": lr})
    for g in extra_groups:
        groups.append({"weight_decay": 0.0, "lr": lr, **g})
    kwargs = {"betas": tuple(betas)} if name == "adamw" else {"momentum": momentum}
    if nesterov is not None and name != "adamw":
        kwargs["nesterov"] = bool(nesterov)
    if fused is not None:
        if fused and name not in FUSED:
            raise ConfigError(f"optim.fused=true: {name} has no fused kernel (torch fuses {', '.join(FUSED)}); "
                              "use optim.fused=null")
        kwargs["fused"] = bool(fused)
    opt = create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def fused_choice(setting, name: str, device: torch.device) -> bool | None:
    """``optim.fused``: True / False as given; None fuses on a GPU where torch can, else None (torch's default)."""
    if setting is None:
        return True if device.type == "cuda" and name in FUSED else None
    return bool(setting)


def set_lr(optimizer: torch.optim.Optimizer, factor: float, *more: float) -> float:
    """Set every group's lr to ``base_lr * factor * more[0] * ...``, in that order; returns the first group's lr."""
    for g in optimizer.param_groups:
        lr = g["base_lr"] * factor
        for f in more:
            lr = lr * f
        g["lr"] = lr
    return optimizer.param_groups[0]["lr"]
