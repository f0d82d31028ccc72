"""Pretraining's checkpoint as the fit loop's checkpoint component (``training.loop.fit``'s ``checkpoint``).

``OUT/checkpoints/last.pt`` keeps the format pretraining has always written (``infoview-pretrain-1``: the
method's weights, the optimizer, the loss scaler, the step, every process's random states, the config, the
provenance and the latest figures; the previous file is kept as ``prev.pt``): exports, ``train.resume``
and the checkpoints of earlier versions read it as before. Unlike an evaluator's, it is a product and stays.

The run's weights are loaded by :meth:`PretrainCheckpoint.load` while the trainer builds the run (before
DDP and ``torch.compile`` wrap the method); ``fit`` then asks :meth:`PretrainCheckpoint.restore` where to go
on. The loader starts an epoch at any batch (``training.components.loader_epochs``), so a resumed run reads
only the batches it trains on, and the random states saved are those after the step it stopped after.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from infoview.errors import InfoviewError
from infoview.pretrain.building import seed_all
from infoview.training import distributed as D
from infoview.training.checkpoint import LAST, RESUME_KEYS, rng_state, save_checkpoint, set_rng_state
from infoview.training.fit_state import Position, Restored
from infoview.utils.provenance import provenance


class PretrainCheckpoint:
    """``ckpt_dir/last.pt`` of a pretraining run: what it holds, saving it, and going on from it.

    ``method``, ``optimizer``, ``scaler`` and ``views`` are the run's (the views' generator is saved with
    the global ones); ``figures``: the dict of the run's latest figures, saved with it.
    """

    resume_hint = " (train.resume=auto)"

    def __init__(self, ckpt_dir: Path, cfg, *, method: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, views, steps_per_epoch: int, figures: dict):
        self.path = Path(ckpt_dir) / LAST
        self.cfg, self.method, self.optimizer, self.scaler, self.views = cfg, method, optimizer, scaler, views
        self.steps_per_epoch, self.figures = steps_per_epoch, figures
        info = D.env_info()
        self.rank, self.world, self.main = info.rank, info.world_size, info.is_main
        self.restored: Restored | None = None

    # -- the random states ---------------------------------------------------------
    def rng(self) -> dict:
        return {"global": rng_state(), "views": self.views.get_rng_state()}

    def set_rng(self, states: dict) -> None:
        set_rng_state(states["global"])
        self.views.set_rng_state(states["views"])

    # -- save ----------------------------------------------------------------------
    def state(self, step: int, collective: bool = True) -> dict:
        """The run's state after ``step`` steps; ``collective=False`` takes no part in collectives and keeps
        this rank's random states only."""
        mine = self.rng()
        rngs = D.all_gather_object(mine) if collective else [mine]
        return {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "world_size": self.world,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "provenance": provenance(),
            "metrics": dict(self.figures),
        }

    def save(self, optimizer, at: Position, losses: list[float], rows: list[dict], epoch_rng: Any,
             collective: bool = True) -> Path | None:
        """The run after step ``at.step`` (``fit``'s call; the losses, rows and epoch's states are not kept:
        the figures are, and the loader needs no states to start an epoch anywhere). Every process calls it
        (a collective); with ``collective=False`` (a pre-emption hook) rank 0 writes alone, with its own
        random states only, and a run resumed from it re-seeds the other ranks' augmentations."""
        state = self.state(at.step, collective)
        path = None
        if self.main:
            path = save_checkpoint(state, self.path)
        if collective:
            D.barrier()
        return path

    # -- go on ---------------------------------------------------------------------
    def load(self, state: dict, source: Path) -> int:
        """Load ``state`` (read from ``source``) into the run; the step it holds. The random states are this
        rank's as saved, or, for a run saved by another number of processes, drawn afresh from the seed."""
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing:
            raise InfoviewError(f"{source} holds no {' or '.join(missing)} state to resume training from "
                                "(an export or a trimmed checkpoint?); start a new run in another out_dir")
        try:
            self.method.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise InfoviewError(
                f"checkpoint {source} does not fit this model ({str(exc).splitlines()[0]}); was it "
                "made with another model.*, method or objective config? Use another out_dir for a new run"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # the schedule is recomputed from the step
            g.setdefault("base_lr", g["lr"])
        self.scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        self.figures.update(state.get("metrics") or {})
        rngs = state.get("rng") or []
        if len(rngs) == self.world:
            self.set_rng(rngs[self.rank])
        else:
            print(
                f"infoview pretrain: resuming a run of {len(rngs)} process(es) on {self.world}: "
                "random augmentations continue from a fresh seed, not the saved states", flush=True,
            )
            seed_all(int(self.cfg.train.seed) + step)
        epoch, batch = divmod(step, self.steps_per_epoch)
        self.restored = Restored(Position(step, epoch, batch))
        return step

    def restore(self, optimizer) -> Restored | None:
        """Where ``fit`` goes on (loaded already: :meth:`load`); None for a new run."""
        return self.restored
