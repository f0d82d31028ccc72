"""The fine-tuning of `infoview detect`: optimiser, loader and the detector's step on the shared fit loop (training.loop)."""
from __future__ import annotations

import sys

import torch
from torch import nn

from infoview.data.detection import collate
from infoview.training import distributed as D
from infoview.training.components import SkippingSampler, dataloader_epochs
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import FitResult, Saves, fit
from infoview.training.optim import build_optimizer, cut_schedule, warmup_decay_factors

#: parameters without weight decay besides the 1-d ones: a ViT's position embedding, class and register tokens
NO_DECAY = ("pos_embed", "cls_token", "reg_token")


def detection_optimizer(model: nn.Module, o) -> torch.optim.Optimizer:
    """SGD with classical momentum, or AdamW with beta1 = optim.momentum; no weight decay on 1-d params and tokens."""
    return build_optimizer(o.name, model, lr=float(o.lr), weight_decay=float(o.weight_decay),
                           momentum=float(o.momentum), betas=(float(o.momentum), 0.999), nesterov=False,
                           no_decay=NO_DECAY)


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in target.items()}


def _loader(train_set, cfg, info: D.DistInfo, device: torch.device, per_rank: int, masks: bool):
    """Each process's share of the shuffled training images, dropping the last partial batch: a loader whose
    sampler starts an epoch at any batch (a resumed run loads only what it trains on)."""

    t, d = cfg.train, cfg.data
    train_view = train_set.configure(masks=masks, flip=float(d.flip), targets=True)
    sampler = SkippingSampler(torch.utils.data.DistributedSampler(
        train_view, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=int(t.seed), drop_last=True,
    ))
    loader = torch.utils.data.DataLoader(
        train_view, batch_size=per_rank, sampler=sampler, num_workers=int(d.num_workers), collate_fn=collate,
        drop_last=True, persistent_workers=d.num_workers > 0, pin_memory=device.type == "cuda",
    )
    return loader


def train(net: nn.Module, model: nn.Module, train_set, cfg, info: D.DistInfo, device: torch.device,
          per_rank: int, steps_per_epoch: int, total: int, checkpoint: FitCheckpoint | None = None) -> FitResult:
    """Fine-tune ``model`` (through ``net``, its DDP wrapper or itself) for ``total`` steps of the shared fit loop.

    A step is the detector's summed losses (its terms are the log's columns),
    averaged over the processes so that all of them stop together on a loss
    that is not finite; the lr follows Detectron2's warm-up and decay. ``checkpoint``: the run goes on from
    it, and saves there when Ctrl-C or SIGTERM stops it and after its last step (training.fit_state).
    """
    t, o = cfg.train, cfg.optim
    warm, cut = cut_schedule(int(o.warmup_steps), total, int(t.epochs) * steps_per_epoch, steps_per_epoch)
    if cut and info.is_main:
        print(f"infoview detect: {cut}", file=sys.stderr, flush=True)
    optimizer = detection_optimizer(model, o)
    loader = _loader(train_set, cfg, info, device, per_rank, masks=cfg.task == "segm")

    def step(batch):
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        losses = net(images, [_to_device(tg, device) for tg in targets])
        return sum(losses.values()), losses

    net.train()
    return fit(
        step, optimizer, dataloader_epochs(loader), steps=total, steps_per_epoch=steps_per_epoch,
        schedule=lambda s: warmup_decay_factors(s, total, warm, o.schedule, o.milestones),
        clip_grad=float(o.clip_grad), clip_params=[p for p in model.parameters() if p.requires_grad],
        amp_dtype=torch.bfloat16 if t.precision == "bf16" else None, reduce=D.all_reduce_mean,
        log_every=max(int(t.log_every), 1), progress=bool(t.progress and info.is_main), desc="detect",
        hint="lower optim.lr or raise optim.warmup_steps, or set optim.clip_grad",
        checkpoint=checkpoint.track({"model": model}) if checkpoint is not None else None,
        saves=Saves(every_steps=int(t.ckpt_every_steps)),
    )
