"""The pretraining engine behind `infoview pretrain` (infoview.commands.pretrain says what it does).

:class:`Trainer` builds the loader, views, encoder, method and optimiser from a config and
runs the loop: checkpoints, resume, the online monitors, signals that stop a run cleanly.
"""
from __future__ import annotations

import gc
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from infoview.augment import build_views
from infoview.augment.recipes import normalization
from infoview.config import save_config
from infoview.data import build_loader
from infoview.data.resident import cap_bytes
from infoview.errors import ConfigError, InfoviewError, Interrupted
from infoview.pretrain.building import build_method, build_objective, precision_dtype, seed_all
from infoview.pretrain.folder import run_folder
from infoview.pretrain.methods import check_needs, get_method
from infoview.pretrain.monitor import OnlineEvalFactory, Report
from infoview.pretrain.resume import resume_state
from infoview.pretrain.step_stats import reduce_step
from infoview.training import distributed as D
from infoview.training.checkpoint import (
    LAST, RESUME_KEYS, remove_stale_temps, rng_state, save_checkpoint, set_rng_state,
)
from infoview.backbones.encoder import build_encoder_from_config
from infoview.training.nonfinite import stop_nonfinite
from infoview.training.optim import build_optimizer, cut_schedule, fused_choice, lr_factor, scaled_lr, set_lr
from infoview.training.signals import signals_deferred, stop_requests
from infoview.utils.io import atomic_write_text
from infoview.utils.provenance import provenance

_ACTIVE: list["Trainer"] = []  # the trainer whose fit() is running in this process


def current_trainer() -> "Trainer | None":
    """The trainer running in this process, for a pre-emption hook (``infoview launch``)."""
    return _ACTIVE[-1] if _ACTIVE else None


# --------------------------------------------------------------------------- the run


class Trainer:
    """Builds everything a run needs from its config; :meth:`fit` trains.

    ``source``: an ``ImageSource`` to train on instead of opening
    ``data.source`` (notebooks, benchmarks); the online monitors still read
    ``data.source``'s ``data.eval_split``.
    """
    def __init__(self, cfg, source=None):
        self.cfg = cfg
        t = cfg.train
        if t.threads:
            torch.set_num_threads(int(t.threads))
        self.info, self.device = D.setup(t.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its kernels
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        world = self.info.world_size
        gb = int(cfg.data.batch_size)
        if gb < 2 or gb % world:
            raise ConfigError(
                f"data.batch_size={gb} is the global batch; it must be >= 2 and divide evenly over the "
                f"{world} process(es)"
            )
        self.global_batch, self.local_batch = gb, gb // world
        self.amp_dtype = precision_dtype(t.precision, self.device)
        build_objective(cfg)  # the method's and objective's names first: a typo is named, not a resume mismatch
        state = self._resume_state()  # what to resume from is decided before anything is built
        self._build_data(source)
        self._build_method()
        self._build_optimizer()
        self.step = 0
        self.metrics: dict[str, Any] = {}  # the latest figures; saved in checkpoints
        if state is not None:
            self._restore(state)
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device] if self.device.type == "cuda" else None,
            )
        else:
            self.model = self.method
        if t.compile:
            self.model = torch.compile(self.model, mode=t.compile_mode)

        self.online_eval = None
        if t.eval_every > 0 and self.info.is_main:
            self.online_eval = OnlineEvalFactory(cfg, self.device, self.mean, self.std, self.loader.source)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.ckpt_dir)
        D.barrier()

    def _resume_state(self) -> dict | None:
        """The checkpoint this run continues (``train.resume``), checked against the config; None for a new run."""
        self.resume_path, state, self.config_changes = resume_state(self.cfg, self.ckpt_dir)
        return state

    def _build_data(self, source) -> None:
        """The loader (seeded), the run's length in steps, and the views."""
        cfg, t, world, gb = self.cfg, self.cfg.train, self.info.world_size, self.global_batch
        seed_all(int(t.seed))
        self.loader = build_loader(
            source if source is not None else cfg.data.source, self.local_batch, split=cfg.data.split, distributed=world > 1, rank=self.info.rank,
            world_size=world, seed=int(t.seed), device=self.device, num_workers=cfg.data.num_workers,
            shuffle=True, drop_last=True, backend=cfg.data.backend, resolution=cfg.data.resolution or None,
            skip_bad=bool(cfg.data.skip_bad), with_indices=get_method(cfg.method).needs_indices,
            decode=cfg.data.decode, resident_cap=cap_bytes(cfg.data.resident_cap_gb),
        )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={gb} is larger than {cfg.data.source}'s {self.loader.dataset_size} images; "
                "lower it"
            )
        full = int(t.epochs) * self.steps_per_epoch
        self.total_steps = int(t.max_steps) if t.max_steps > 0 else full
        if self.total_steps <= 0:
            raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")
        self.warmup_steps, cut = cut_schedule(round(cfg.optim.warmup_epochs * self.steps_per_epoch), self.total_steps,
                                              full, self.steps_per_epoch, cfg.objective.get("anneal_epochs"))
        if cut and self.info.is_main:
            print(f"infoview pretrain: {cut}", file=sys.stderr, flush=True)

        a = cfg.augment
        self.mean, self.std = normalization(a.normalize, None, None)
        view_seed = (int(t.seed) * 1_000_003 + 7 * self.info.rank + 1) % 2**62
        self.views = build_views(
            a.recipe, a.size, a.num_views, seed=view_seed, normalize=a.normalize,
            overrides=OmegaConf.to_container(a.overrides) or None, backend=a.backend,
        )

    def _build_method(self) -> None:
        """The encoder (the same initial weights on every rank) and the method around it, on the device."""
        cfg, t, a, world = self.cfg, self.cfg.train, self.cfg.augment, self.info.world_size
        num_classes = self.loader.num_classes if cfg.monitor.probe else 0
        torch.manual_seed(int(t.seed))  # the same initial weights on every rank and in a resumed run
        check_needs(cfg, len(self.views.specs), self.loader.dataset_size)  # every change it needs, in one error
        self.encoder = build_encoder_from_config(cfg.model, a.size, a.normalize)
        method = build_method(cfg, self.encoder, max(num_classes, 0), self.loader.dataset_size)
        method.check_run(self.local_batch, world)
        if method.wants_split_labels:  # CRD with labels draws each image's negatives from the other classes
            method.set_split_labels(torch.as_tensor(self.loader.source.labels()))
        if (cfg.model.sync_bn or method.sync_bn) and world > 1:
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.channels_last = bool(t.channels_last) and self.device.type == "cuda"
        method.to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        self.method = method

    def _build_optimizer(self) -> None:
        """The optimiser at the peak learning rate the global batch gets, and the loss scaler."""
        cfg, method, gb = self.cfg, self.method, self.global_batch
        peak = scaled_lr(cfg.optim.lr, gb, cfg.optim.ref_batch, cfg.optim.lr_scaling)
        self.peak_lr = peak
        probe = method.probe_parameters()
        self.optimizer = build_optimizer(
            cfg.optim.name, method, peak, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.betas,
            extra_groups=[{"params": probe, "lr": cfg.optim.probe_lr}] if probe else (),
            exclude=probe, fused=fused_choice(cfg.optim.fused, cfg.optim.name, self.device),
        )
        self.min_ratio = cfg.optim.min_lr / peak if peak > 0 else 0.0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # -- checkpoints -----------------------------------------------------------
    def _state(self, collective: bool = True) -> dict:
        """The run's state; ``collective=False`` takes no part in collectives and keeps this rank's RNG only."""
        mine = {"global": rng_state(), "views": self.views.get_rng_state()}
        rngs = D.all_gather_object(mine) if collective else [mine]
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "world_size": self.info.world_size,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "provenance": provenance(),
            "metrics": dict(self.metrics),
        }

    def save(self) -> None:
        state = self._state()  # every rank takes part in gathering the RNG states
        if self.info.is_main:
            save_checkpoint(state, self.ckpt_dir / LAST)
        D.barrier()

    def save_now(self) -> Path | None:
        """Save from rank 0 alone, with no collective: for a pre-emption or time-out hook.

        The training loop defers SIGUSR2 and SIGTERM while a step runs, so a
        signal handler that calls this sees the state between two steps. Other
        ranks' RNG states are not gathered; a run resumed from it re-seeds
        their augmentations.
        """
        if not self.info.is_main:
            return None
        return save_checkpoint(self._state(collective=False), self.ckpt_dir / LAST)

    def _restore(self, state: dict) -> None:
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing:
            raise InfoviewError(f"{self.resume_path} holds no {' or '.join(missing)} state to resume training from "
                                "(an export or a trimmed checkpoint?); start a new run in another out_dir")

        try:
            self.method.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise InfoviewError(
                f"checkpoint {self.resume_path} does not fit this model ({str(exc).splitlines()[0]}); was it "
                "made with another model.*, method or objective config? Use another out_dir for a new run"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # the schedule is recomputed from the step
            g.setdefault("base_lr", g["lr"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.metrics = dict(state.get("metrics") or {})
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            mine = rngs[self.info.rank]
            set_rng_state(mine["global"])
            self.views.set_rng_state(mine["views"])
        else:
            print(
                f"infoview pretrain: resuming a run of {len(rngs)} process(es) on {self.info.world_size}: "
                "random augmentations continue from a fresh seed, not the saved states", flush=True,
            )
            seed_all(int(self.cfg.train.seed) + self.step)

    def _stop_nonfinite(self, images, labels, loss_v, mi_v, views_rng, index=None):
        """Save what replays the step whose loss was not finite (a bank method's image indices too), and stop."""
        replay = {"images": images.cpu(), "labels": labels.cpu(), "views_rng_before": views_rng,
                  "stats": [loss_v, mi_v], **({"indices": index.cpu()} if index is not None else {})}
        stop_nonfinite(self.ckpt_dir, self.step, self.info.rank, self._state(collective=False), replay,
                       figures=f"loss={loss_v}, mi={mi_v}", when=f"epoch {self.step / self.steps_per_epoch:.2f}",
                       hint="Lower optim.lr, set optim.clip_grad, or try train.precision=fp32")

    # -- one step ----------------------------------------------------------------
    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = self.views(images)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def train_step(self, views: list[torch.Tensor], labels: torch.Tensor, stop: bool = False, indices=None):
        """One optimisation step at ``self.step`` (which the caller advances).

        Returns ``(lr, StepStats, ceiling)``: the step's figures over every process, by name
        (:mod:`infoview.pretrain.step_stats`); ``stats.stop`` counts the processes asked to stop (Ctrl-C,
        SIGTERM), so that all of them stop after the same step. Parameters are left untouched when the
        loss is not finite, so the caller can save the state that produced it.
        """
        self.method.set_progress(self.step, self.total_steps, self.step / self.steps_per_epoch)
        lr = set_lr(self.optimizer, lr_factor(self.step, self.total_steps, self.warmup_steps, self.min_ratio))
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(views, labels) if indices is None else self.model(views, labels, indices)
        stats = reduce_step(out, stop, self.info.world_size)
        if stats.nonfinite:
            return lr, stats, out.ceiling
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return lr, stats, out.ceiling

    # -- the loop --------------------------------------------------------------
    def _write_config(self) -> None:
        """config.yaml: the settings of this run (a resumed run that changed some keeps the old file beside it)."""
        if not self.info.is_main:
            return
        current = self.out / "config.yaml"
        if self.config_changes and current.is_file():  # the settings the steps so far were trained with
            current.replace(self.out / f"config.until_step{self.step}.yaml")
        save_config(self.cfg, current, extra={"world_size": self.info.world_size,
                                              "resumed_from": str(self.resume_path or ""),
                                              "changed_on_resume": list(self.config_changes)})

    def fit(self) -> dict:
        self._write_config()
        report = Report(self.out, self.step, self.total_steps, self.steps_per_epoch, self.global_batch,
                        main=self.info.is_main, progress=bool(self.cfg.train.progress))
        if self.step >= self.total_steps and self.info.is_main:
            print(f"infoview pretrain: {self.resume_path} is at step {self.step} of {self.total_steps}: already "
                  "done (raise train.epochs or train.max_steps to train on)", flush=True)
        _ACTIVE.append(self)
        try:
            with stop_requests() as stop:
                while self.step < self.total_steps:
                    self._train_epoch(stop, report)
                    if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                        self._end_of_epoch(report)
        finally:
            _ACTIVE.remove(self)
            report.close()
        return self._result()

    def _train_epoch(self, stop: dict, report: "Report") -> None:
        """Steps until the epoch ends, the run's length is reached, or a stop request saves and raises."""
        t, spe = self.cfg.train, self.steps_per_epoch
        epoch, start = divmod(self.step, spe)
        self.loader.set_epoch(epoch, start_batch=start)
        self.method.train()
        for images, labels, *index in self.loader:  # index: each image's, for a method that keys a bank by it
            with signals_deferred():  # a pre-emption hook runs between steps, never inside one
                views_rng, asked = self.views.get_rng_state(), stop["signal"] is not None
                lr, stats, ceiling = self.train_step(self.make_views(images), labels, asked, *index)
                if stats.nonfinite:
                    self._stop_nonfinite(images, labels, stats.loss, stats.mi, views_rng, *index)
                self.step += 1
                last = {"loss": stats.loss, "mi": stats.mi if math.isfinite(stats.mi) else None,  # None: no bound
                        "mi_estimate": stats.mi_estimate, "lr": lr,
                        "mi_ceiling": ceiling if math.isfinite(ceiling) else None}
                self.metrics.update(last)
                done = self.step >= self.total_steps
                report.step(self.step, last, stats, ceiling, write=self.step % t.log_every == 0 or done)
                if stats.stop and not done:
                    self.save()
                    raise Interrupted(
                        f"stopped by {stop['signal'] or 'another rank'} at step {self.step} of "
                        f"{self.total_steps}; saved {self.ckpt_dir / 'last.pt'}. Run the same command "
                        "again to resume (train.resume=auto)"
                    )
                epoch_end_saves = self.step % spe == 0 and (self.step // spe) % t.ckpt_every_epochs == 0
                if t.ckpt_every_steps > 0 and self.step % t.ckpt_every_steps == 0 and not epoch_end_saves \
                        and not done:
                    self.save()  # (an epoch's end saves below)
                if done:
                    break

    def _end_of_epoch(self, report: "Report") -> None:
        """Save, then (every train.eval_every epochs and at the end) the online monitors, then the plot.
        Every rank decides alike, so all meet at the barrier where the others wait for rank 0's evaluation."""
        spe, final, every = self.steps_per_epoch, self.step >= self.total_steps, self.cfg.train.eval_every
        evaluate = every > 0 and (final or (self.step // spe) % every == 0)
        if final or evaluate or (self.step // spe) % self.cfg.train.ckpt_every_epochs == 0:
            self.save()  # before the monitors: an evaluation killed half-way loses nothing
        if not evaluate:
            return
        if self.online_eval is not None:  # rank 0
            online = self.online_eval(self.method)
            self.metrics.update(online)
            report.online(self.step, online)
        D.barrier()
        if final:
            self.save()  # the final checkpoint carries the final figures too
        report.plot()  # (rank 0's)

    def _result(self) -> dict:
        """The run's final figures (pretrain.json, written by rank 0)."""
        skipped = torch.tensor(float(len(getattr(self.loader, "skipped", ()))), device=self.device)
        if D.is_distributed():
            torch.distributed.all_reduce(skipped)
        result = {
            "steps": self.step, "epochs": round(self.step / self.steps_per_epoch, 4), "global_batch": self.global_batch,
            "skipped_images": int(skipped.item()),
            "world_size": self.info.world_size, "peak_lr": self.peak_lr, **self.metrics,
            "checkpoint": str(self.ckpt_dir / "last.pt"),
        }
        if self.device.type == "cuda":  # this process's, over the run (the speed figures' companion)
            result["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if self.info.is_main:
            atomic_write_text(self.out / "pretrain.json", json.dumps({**result, "provenance": provenance()}, indent=2))
        return result


def _fit(cfg, command: str) -> tuple[dict, bool]:
    with run_folder(cfg, command, D.env_info().is_main):  # one run per folder; running out of memory is one line
        trainer = Trainer(cfg)
        result = trainer.fit()
        # no rank tears the group down while another still writes (rank 0: pretrain.json, curves.png); gloo
        # aborted the process ("terminate called without an active exception") when one left early
        D.barrier()
    return result, trainer.info.is_main


def run(cfg, command: str = "pretrain") -> dict | None:
    """Pretrain as ``infoview <command>`` (pretrain, distill): the run holds ``cfg.out_dir`` while it trains."""
    try:
        result, is_main = _fit(cfg, command)
        return result if is_main else None  # one rank reports
    finally:
        # reference cycles kept the DDP wrapper, and the process group, past destroy_process_group; gloo's threads
        # then ended at exit, where a finished rank sometimes aborted (SIGABRT). Collect first. (The report holds
        # no trainer; the cycles are frames of Trainer.__init__ and fit that exceptions caught on the way keep.)
        gc.collect()
        D.teardown()
