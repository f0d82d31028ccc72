"""The fine-tuning loop of `infoview detect`: optimiser and schedule (infoview.runtime.optim), loader, log."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from infoview.data.detection import collate
from infoview.errors import InfoviewError
from infoview.runtime import distributed as D
from infoview.runtime.optim import build_optimizer, set_lr, warmup_decay_factors

#: parameters without weight decay besides the 1-d ones: a ViT's position embedding, class and register tokens
NO_DECAY = ("pos_embed", "cls_token", "reg_token")


@dataclass
class Trained:
    """What the loop leaves: the log rows, the steps taken, the last mean loss, and the seconds it took."""

    log: list[dict] = field(default_factory=list)
    steps: int = 0
    final_loss: float = float("nan")
    seconds: float = 0.0


def detection_optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
    """SGD with classical momentum, or AdamW with beta1 = train.momentum; no weight decay on 1-d params and tokens."""
    return build_optimizer(t.optimizer, model, section="train", lr=float(t.lr), weight_decay=float(t.weight_decay),
                           momentum=float(t.momentum), betas=(float(t.momentum), 0.999), nesterov=False,
                           no_decay=NO_DECAY)


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in target.items()}


def _loader(train_set, cfg, info: D.DistInfo, device: torch.device, per_rank: int, masks: bool):
    """``(sampler, loader)``: each process's share of the shuffled training images, dropping the last partial batch."""

    t, d = cfg.train, cfg.data
    train_view = train_set.configure(masks=masks, flip=float(d.flip), targets=True)
    sampler = torch.utils.data.DistributedSampler(
        train_view, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=int(t.seed), drop_last=True,
    )
    loader = torch.utils.data.DataLoader(
        train_view, batch_size=per_rank, sampler=sampler, num_workers=int(d.num_workers), collate_fn=collate,
        drop_last=True, persistent_workers=d.num_workers > 0, pin_memory=device.type == "cuda",
    )
    return sampler, loader


def _step(net: nn.Module, model: nn.Module, optimizer, images, targets, step: int, t, autocast,
          device: torch.device) -> tuple[dict, float]:
    """One optimiser step; returns the loss terms and the loss averaged over the processes."""
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [_to_device(tg, device) for tg in targets]
    with autocast:
        losses = net(images, targets)
    loss = sum(losses.values())
    mean_loss = float(D.all_reduce_mean(loss.detach()))  # every rank stops together on a bad loss
    if not math.isfinite(mean_loss):
        raise InfoviewError(
            f"the detection loss is {mean_loss} at step {step} "
            f"({', '.join(f'{k} {float(v):.3g}' for k, v in losses.items())}); lower train.lr "
            "or raise train.warmup_steps, or set train.clip_grad"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if t.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.clip_grad)
    optimizer.step()
    return losses, mean_loss


def train(net: nn.Module, model: nn.Module, train_set, cfg, info: D.DistInfo, device: torch.device,
          per_rank: int, steps_per_epoch: int, total: int) -> Trained:
    """Fine-tune ``model`` (through ``net``, its DDP wrapper or itself) for ``total`` steps."""
    t = cfg.train
    optimizer = detection_optimizer(model, t)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())
    sampler, loader = _loader(train_set, cfg, info, device, per_rank, masks=cfg.task == "segm")
    done = Trained()
    net.train()
    start = time.time()
    epoch = 0
    bar = tqdm(total=total, desc="detect", disable=not (t.progress and info.is_main), file=sys.stderr)
    while done.steps < total:
        sampler.set_epoch(epoch)
        for images, targets in loader:
            step = done.steps
            lr = set_lr(optimizer, *warmup_decay_factors(step, total, int(t.warmup_steps), t.schedule, t.milestones))
            losses, done.final_loss = _step(net, model, optimizer, images, targets, step, t, autocast, device)
            done.steps = step = step + 1
            if step % max(int(t.log_every), 1) == 0 or step == total:
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr, "loss": done.final_loss}
                row.update({k: float(D.all_reduce_mean(v.detach())) for k, v in losses.items()})
                done.log.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{done.final_loss:.3f}", lr=f"{lr:.2g}")
            if step >= total:
                break
        epoch += 1
    bar.close()
    done.seconds = time.time() - start
    return done
