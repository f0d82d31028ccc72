"""The pretraining engine behind `infoview pretrain` (infoview.commands.pretrain says what it does).

:class:`Trainer` builds the loader, views, encoder, method and optimiser from a config, and trains them on
the one training loop (``training.loop.fit``) with pretraining's components: its checkpoint
(``pretrain.checkpoint``), its metrics and online monitors (``pretrain.monitor``), its step figures in one
reduction (``pretrain.step_stats``) and its non-finite dump (``training.nonfinite``).
"""
from __future__ import annotations

import gc
import json
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
from infoview.errors import ConfigError
from infoview.pretrain.building import build_method, build_objective, precision_dtype, seed_all
from infoview.pretrain.checkpoint import PretrainCheckpoint
from infoview.pretrain.folder import run_folder
from infoview.pretrain.methods import check_needs, get_method
from infoview.pretrain.monitor import OnlineEvalFactory, OnlineMonitors, Report
from infoview.pretrain.resume import resume_state
from infoview.pretrain.step_stats import reduce_step
from infoview.training import distributed as D
from infoview.training.checkpoint import remove_stale_temps
from infoview.backbones.encoder import build_encoder_from_config
from infoview.training.components import Component, StepEnd, loader_epochs
from infoview.training.loop import Saves, fit, optimizer_step
from infoview.training.nonfinite import stop_nonfinite
from infoview.training.optim import build_optimizer, cut_schedule, fused_choice, lr_factor, scaled_lr, set_lr
from infoview.utils.io import atomic_write_text
from infoview.utils.provenance import provenance


# --------------------------------------------------------------------------- the run


class Trainer(Component):
    """Builds everything a run needs from its config; :meth:`fit` trains (a component of the loop: it
    follows the step its method's schedules read).

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
        self.checkpoint = PretrainCheckpoint(self.ckpt_dir, cfg, method=self.method, optimizer=self.optimizer,
                                             scaler=self.scaler, views=self.views,
                                             steps_per_epoch=self.steps_per_epoch, figures=self.metrics)
        if state is not None:
            self.step = self.checkpoint.load(state, self.resume_path)
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
        self._clip_params = list(method.parameters())  # (the order of the norm's sum, as it always was)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _stop_nonfinite(self, images, labels, loss_v, mi_v, views_rng, index=None):
        """Save what replays the step whose loss was not finite (a bank method's image indices too), and stop."""
        replay = {"images": images.cpu(), "labels": labels.cpu(), "views_rng_before": views_rng,
                  "stats": [loss_v, mi_v], **({"indices": index.cpu()} if index is not None else {})}
        stop_nonfinite(self.ckpt_dir, self.step, self.info.rank, self.checkpoint.state(self.step, False), replay,
                       figures=f"loss={loss_v}, mi={mi_v}", when=f"epoch {self.step / self.steps_per_epoch:.2f}",
                       hint="Lower optim.lr, set optim.clip_grad, or try train.precision=fp32")

    # -- one step ----------------------------------------------------------------
    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = self.views(images)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def _forward(self, views: list[torch.Tensor], labels: torch.Tensor, indices=None):
        """The method on one step's views at ``self.step``: ``(loss, its StepOutput)``."""
        self.method.set_progress(self.step, self.total_steps, self.step / self.steps_per_epoch)
        out = self.model(views, labels) if indices is None else self.model(views, labels, indices)
        return out.loss, out

    def _step(self, batch):
        """``fit``'s step: the views of a batch (the views' random state kept for a non-finite dump), the method."""
        images, labels, *index = batch  # index: each image's, for a method that keys a bank by it
        self._views_rng = self.views.get_rng_state()
        return self._forward(self.make_views(images), labels, *index)

    def _reduce(self, output, asked: bool):
        """``fit``'s ``reduce_step``: the step's figures over every process in one collective (``StepStats``)."""
        return reduce_step(output[1], asked, self.info.world_size)

    def _on_nonfinite(self, step: int, stats, batch, output) -> None:
        images, labels, *index = batch
        self._stop_nonfinite(images, labels, stats.loss, stats.mi, self._views_rng, *index)

    def _lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_ratio)

    def train_step(self, views: list[torch.Tensor], labels: torch.Tensor, stop: bool = False, indices=None):
        """One step at ``self.step`` (which the caller advances) outside ``fit``: for benchmarks/train_step.py
        and the GPU tests, which time and compare the step itself; the pieces are ``fit``'s.

        Returns ``(lr, StepStats, ceiling)``: the step's figures over every process, by name
        (:mod:`infoview.pretrain.step_stats`). Parameters are left untouched when the loss is not finite.
        """
        lr = set_lr(self.optimizer, self._lr_factor(self.step))
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, out = self._forward(views, labels, indices)
        stats = reduce_step(out, stop, self.info.world_size)
        if not stats.nonfinite:
            optimizer_step(self.optimizer, loss, self.cfg.optim.clip_grad, self._clip_params, self.scaler)
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
        """Train to ``train.epochs`` (or ``train.max_steps``) on the fit loop; the run's figures (pretrain.json)."""
        self._write_config()
        t, main = self.cfg.train, self.info.is_main
        report = Report(self.out, self.step, self.steps_per_epoch, self.global_batch, int(t.log_every),
                        figures=self.metrics, main=main, progress=bool(t.progress))
        monitors = OnlineMonitors(self.online_eval, int(t.eval_every), self.steps_per_epoch, report, self.method,
                                  self.metrics)
        if self.step >= self.total_steps and main:
            print(f"infoview pretrain: {self.resume_path} is at step {self.step} of {self.total_steps}: already "
                  "done (raise train.epochs or train.max_steps to train on)", flush=True)
        fit(self._step, self.optimizer, loader_epochs(self.loader, before=self.method.train), steps=self.total_steps,
            schedule=self._lr_factor, clip_grad=float(self.cfg.optim.clip_grad), clip_params=self._clip_params,
            amp_dtype=self.amp_dtype, scaler=self.scaler, reduce_step=self._reduce,
            steps_per_epoch=self.steps_per_epoch, progress=bool(t.progress) and main, postfix=report.postfix,
            desc="pretrain", hint="Lower optim.lr, set optim.clip_grad, or try train.precision=fp32",
            checkpoint=self.checkpoint, saves=Saves(int(t.ckpt_every_steps), int(t.ckpt_every_epochs)),
            components=[self, report, monitors], on_nonfinite=self._on_nonfinite)
        return self._result()

    def step_end(self, end: StepEnd) -> None:
        self.step = end.step

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
