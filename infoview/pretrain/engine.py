"""The pretraining engine behind `infoview pretrain` (infoview.commands.pretrain says what it does).

:class:`Trainer` builds the loader, views, encoder, method and optimiser from a config and
runs the loop: checkpoints, resume, the online monitors, signals that stop a run cleanly.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from infoview.augment import build_views
from infoview.augment.recipes import normalization
from infoview.config import did_you_mean, flatten, save_config
from infoview.data import build_loader, check_held_out, open_source
from infoview.errors import ConfigError, InfoviewError, Interrupted
from infoview.models import predictor as make_predictor, projector as make_projector
from infoview.objectives import build, objective_params
from infoview.pretrain.methods import METHODS, MoCo, SimCLR
from infoview.pretrain.monitor import OnlineEval, metrics_log
from infoview.runtime import distributed as D
from infoview.runtime.encoder import build_encoder_from_config
from infoview.runtime.checkpoint import (
    LAST,
    RESUME_KEYS,
    find_resume,
    load_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from infoview.runtime.optim import build_optimizer, lr_factor, scaled_lr, set_lr
from infoview.utils.io import atomic_write_text
from infoview.utils.provenance import provenance

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --------------------------------------------------------------------------- building blocks


def build_objective(cfg):
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method '{cfg.method}'" + did_you_mean(cfg.method, METHODS)
                          + f" Methods: {', '.join(METHODS)}")
    params = {k: v for k, v in cfg.objective.items() if k != "name"}
    name = cfg.objective.name
    if "temperature" in objective_params(name) and "temperature" not in params:
        # HCL/DCL's floor K exp(-1/t) must use the temperature the scores were divided by
        params["temperature"] = cfg[cfg.method].temperature
    try:
        return build(name, **params)
    except ValueError as exc:
        raise ConfigError(f"objective.{name}: {exc}") from None


def build_method(cfg, encoder, num_classes: int):
    m = cfg.model
    objective = build_objective(cfg)
    temperature = cfg[cfg.method].temperature
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ConfigError(f"{cfg.method}.temperature divides the scores: it must be a positive number, got "
                          f"{temperature}")
    proj = make_projector(encoder.feature_dim, m.proj_hidden, m.proj_dim, m.proj_layers, m.proj_bn, m.proj_last_bn)
    if cfg.method == "simclr":
        if m.pred_hidden:
            raise ConfigError("model.pred_hidden (a predictor) is used by method=moco only; set it to 0 for simclr")
        return SimCLR(encoder, proj, objective, num_classes, temperature=cfg.simclr.temperature)
    if cfg.method == "moco":
        mc = cfg.moco
        pred = make_predictor(proj.out_dim, m.pred_hidden) if m.pred_hidden else None
        return MoCo(
            encoder, proj, objective, num_classes, temperature=mc.temperature, queue_size=mc.queue_size,
            momentum=mc.momentum, momentum_final=mc.momentum_final, bn=mc.bn, bn_splits=mc.bn_splits,
            symmetric=mc.symmetric, predictor=pred, seed=cfg.train.seed,
        )
    raise AssertionError(cfg.method)  # build_objective checked it


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{name}'")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on a CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


_DEFERRED = tuple(getattr(signal, n) for n in ("SIGUSR2", "SIGTERM") if hasattr(signal, n))
_ACTIVE: list["Trainer"] = []  # the trainer whose fit() is running in this process


def current_trainer() -> "Trainer | None":
    """The trainer running in this process, for a pre-emption hook (``infoview.launch``)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGUSR2/SIGTERM (SLURM's pre-emption and time-out signals) until the block ends.

    A handler that saves a checkpoint then never sees a half-applied step.
    Only the main thread can do this; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread() or not _DEFERRED:
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)


@contextlib.contextmanager
def _stop_requests():
    """While training, Ctrl-C (SIGINT) and SIGTERM only ask the loop to stop; it saves, then stops.

    Yields a dict whose "signal" is set to the signal's name. A second Ctrl-C
    stops at once (KeyboardInterrupt). Handlers someone else installed (a
    SLURM job's, through submitit) are left alone; off the main thread nothing
    is installed.
    """
    request: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {s: signal.getsignal(s) for s in defaults}
    mine = [s for s, default in defaults.items() if previous[s] is default]
    for s in mine:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s in mine:
            signal.signal(s, previous[s])


#: keys a resumed run may change: where and how fast it runs, how long, what it logs, not what it trains
RESUME_MAY_CHANGE = (
    "out_dir", "train.resume", "train.allow_config_change", "train.epochs", "train.max_steps", "train.progress",
    "train.device", "train.threads", "train.log_every", "train.eval_every", "train.ckpt_every_steps",
    "data.num_workers", "data.backend", "data.eval_source", "data.eval_split", "monitor.",
)


def config_changes(saved: dict, now: dict) -> list[str]:
    """``"key: old -> new"`` for every training setting that differs between a checkpoint's config and this run's."""
    a, b = flatten(saved), flatten(now)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    return out


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


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
        self.amp_dtype = _precision(t.precision, self.device)

        # what to resume from is decided before anything is built
        self.resume_path = None
        if str(t.resume).lower() == "auto":
            self.resume_path = find_resume(self.ckpt_dir)
        elif str(t.resume).lower() in ("never", "none", "", "false"):
            if find_resume(self.ckpt_dir) is not None:
                raise InfoviewError(
                    f"{self.ckpt_dir} already holds a checkpoint and train.resume={t.resume}; continue it with "
                    "train.resume=auto, or choose another out_dir"
                )
        else:
            self.resume_path = Path(str(t.resume))
        state = load_checkpoint(self.resume_path) if self.resume_path is not None else None
        self.config_changes: list[str] = []
        if state is not None:
            self.config_changes = config_changes(state.get("config") or {}, OmegaConf.to_container(cfg, resolve=True))
            if self.config_changes and not t.allow_config_change:
                shown = "; ".join(self.config_changes[:6]) + (
                    f"; and {len(self.config_changes) - 6} more" if len(self.config_changes) > 6 else "")
                raise InfoviewError(
                    f"{self.resume_path} was trained with other settings ({shown}); a resumed run must keep them, "
                    "or its metrics and config.yaml would describe a run that never happened. Use another out_dir "
                    "for a new run, or pass train.allow_config_change=true to go on with the new settings "
                    "(config.yaml then holds them, and the old one is kept beside it)"
                )

        _seed_all(int(t.seed))
        self.loader = build_loader(
            source if source is not None else cfg.data.source, self.local_batch, split=cfg.data.split, distributed=world > 1, rank=self.info.rank,
            world_size=world, seed=int(t.seed), device=self.device, num_workers=cfg.data.num_workers,
            shuffle=True, drop_last=True, backend=cfg.data.backend, resolution=cfg.data.resolution or None,
            skip_bad=bool(cfg.data.skip_bad),
        )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={gb} is larger than {cfg.data.source}'s {self.loader.dataset_size} images; "
                "lower it"
            )
        self.total_steps = int(t.max_steps) if t.max_steps > 0 else int(t.epochs) * self.steps_per_epoch
        if self.total_steps <= 0:
            raise ConfigError("nothing to train: set train.epochs or train.max_steps to a positive number")
        self.warmup_steps = min(int(round(cfg.optim.warmup_epochs * self.steps_per_epoch)), self.total_steps)

        a = cfg.augment
        self.mean, self.std = normalization(a.normalize, None, None)
        view_seed = (int(t.seed) * 1_000_003 + 7 * self.info.rank + 1) % 2**62
        self.views = build_views(
            a.recipe, a.size, a.num_views, seed=view_seed, normalize=a.normalize,
            overrides=OmegaConf.to_container(a.overrides) or None, backend=a.backend,
        )

        num_classes = self.loader.num_classes if cfg.monitor.probe else 0
        torch.manual_seed(int(t.seed))  # the same initial weights on every rank and in a resumed run
        self.encoder = build_encoder_from_config(cfg.model, a.size)
        method = build_method(cfg, self.encoder, max(num_classes, 0))
        if cfg.method == "moco" and len(self.views.specs) != 2:
            raise ConfigError("method=moco takes augment.num_views=2 and a two-view recipe")
        if len(self.views.specs) < 2:
            raise ConfigError(f"method={cfg.method} contrasts views of one image: augment.num_views must be at "
                              f"least 2, got {len(self.views.specs)}")
        splits = getattr(method, "bn_splits", 0) if getattr(method, "bn", None) == "split" else 0
        if splits and (self.local_batch % splits or self.local_batch // splits < 2):
            raise ConfigError(
                f"moco.bn=split splits each process's batch of {self.local_batch} into moco.bn_splits={splits} "
                f"BatchNorm groups; make data.batch_size per process a multiple of {splits} (at least {2 * splits}) "
                "or change moco.bn_splits"
            )
        if (cfg.model.sync_bn or (cfg.method == "moco" and cfg.moco.bn == "sync")) and world > 1:
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.channels_last = bool(t.channels_last) and self.device.type == "cuda"
        method.to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        self.method = method

        peak = scaled_lr(cfg.optim.lr, gb, cfg.optim.ref_batch, cfg.optim.lr_scaling)
        self.peak_lr = peak
        probe = method.probe_parameters()
        self.optimizer = build_optimizer(
            cfg.optim.name, method, peak, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.betas,
            extra_groups=[{"params": probe, "lr": cfg.optim.probe_lr}] if probe else (),
            exclude=probe,
        )
        self.min_ratio = cfg.optim.min_lr / peak if peak > 0 else 0.0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.metrics: dict[str, Any] = {}  # the latest figures; saved in checkpoints
        if state is not None:
            self._restore(state)
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device] if self.device.type == "cuda" else None,
            )
        else:
            self.model = method
        if t.compile:
            self.model = torch.compile(self.model)

        self.online_eval = None
        if t.eval_every > 0 and self.info.is_main:
            self.online_eval = OnlineEvalFactory(cfg, self.device, self.mean, self.std, self.loader.source)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.ckpt_dir)
        D.barrier()

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
            _seed_all(int(self.cfg.train.seed) + self.step)

    def _dump_nonfinite(self, images, labels, stats, views_rng) -> Path:
        """Everything needed to replay the step whose loss was not finite."""
        path = self.ckpt_dir / f"nonfinite_step{self.step}_rank{self.info.rank}.pt"
        state = self._state(collective=False)
        state.update({"images": images.cpu(), "labels": labels.cpu(), "views_rng_before": views_rng,
                      "stats": stats})
        save_checkpoint(state, path, keep_previous=False)
        return path

    def _stop_nonfinite(self, images, labels, loss_v, mi_v, views_rng):
        """Save what replays the step whose loss was not finite, and stop with a message that says so."""
        path = self._dump_nonfinite(images, labels, [loss_v, mi_v], views_rng)
        good = find_resume(self.ckpt_dir)
        where = f"the last good checkpoint is {good}" if good is not None else "no checkpoint had been written yet"
        raise InfoviewError(
            f"the loss is not finite (loss={loss_v}, mi={mi_v}) at step {self.step} "
            f"(epoch {self.step / self.steps_per_epoch:.2f}); the model, the optimizer and the batch are saved "
            f"in {path} to investigate, and {where}. "
            "Lower optim.lr, set optim.clip_grad, or try train.precision=fp32"
        )

    # -- one step ----------------------------------------------------------------
    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = self.views(images)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def train_step(self, views: list[torch.Tensor], labels: torch.Tensor, stop: bool = False):
        """One optimisation step at ``self.step`` (which the caller advances).

        Returns ``(lr, [loss, mi, mi_estimate, probe_loss, probe_correct, probe_count, stop, nonfinite],
        ceiling)``, averaged or summed over ranks; ``stop`` counts the ranks asked to stop (Ctrl-C,
        SIGTERM), so that all of them stop after the same step. Parameters are left untouched when the
        loss is not finite, so the caller can save the state that produced it.
        """
        self.method.set_progress(self.step, self.total_steps, self.step / self.steps_per_epoch)
        lr = set_lr(self.optimizer, lr_factor(self.step, self.total_steps, self.warmup_steps, self.min_ratio))
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(views, labels)
        stats = torch.stack([
            out.ssl_loss.float(), out.mi.float(), out.mi_estimate.float(), out.probe_loss.float(),
            out.probe_correct.float(), out.probe_count.float(), out.loss.new_tensor(float(stop)).float(),
            (~torch.isfinite(out.loss)).float(),
        ])
        if D.is_distributed():
            torch.distributed.all_reduce(stats)
            stats[:4] /= self.info.world_size
        values = stats.tolist()
        if values[-1]:
            return lr, values, out.ceiling
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return lr, values, out.ceiling

    # -- the loop --------------------------------------------------------------
    def fit(self) -> dict:
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if info.is_main:
            current = self.out / "config.yaml"
            if self.config_changes and current.is_file():  # the settings the steps so far were trained with
                current.replace(self.out / f"config.until_step{self.step}.yaml")
            save_config(cfg, current, extra={"world_size": info.world_size,
                                             "resumed_from": str(self.resume_path or ""),
                                             "changed_on_resume": list(self.config_changes)})
        log = metrics_log(self.out, start_step=self.step) if info.is_main else None
        bar = None
        if info.is_main and t.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="pretrain", unit="step", dynamic_ncols=True)
        spe = self.steps_per_epoch
        if self.step >= self.total_steps and info.is_main:
            print(f"infoview pretrain: {self.resume_path} is at step {self.step} of {self.total_steps}: already "
                  "done (raise train.epochs or train.max_steps to train on)", flush=True)
        seen, t0 = 0, time.perf_counter()
        probe_correct = probe_count = 0.0
        _ACTIVE.append(self)
        try:
            with _stop_requests() as stop:
                while self.step < self.total_steps:
                    epoch, start = divmod(self.step, spe)
                    self.loader.set_epoch(epoch, start_batch=start)
                    self.method.train()
                    for images, labels in self.loader:
                        with _signals_deferred():  # a pre-emption hook runs between steps, never inside one
                            views_rng = self.views.get_rng_state()
                            lr, (loss_v, mi_v, est_v, probe_loss_v, correct_v, count_v, stopping, bad), ceiling = \
                                self.train_step(self.make_views(images), labels, stop=stop["signal"] is not None)
                            if bad:
                                self._stop_nonfinite(images, labels, loss_v, mi_v, views_rng)
                            self.step += 1
                            seen += self.global_batch
                            probe_correct += correct_v
                            probe_count += count_v
                            last = {"loss": loss_v, "mi": mi_v, "mi_estimate": est_v, "lr": lr,
                                    "mi_ceiling": ceiling if math.isfinite(ceiling) else None}
                            self.metrics.update(last)
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix(loss=f"{loss_v:.3f}", mi=f"{mi_v:.2f}/{ceiling:.2f}",
                                                lr=f"{lr:.3g}", refresh=False)
                            done = self.step >= self.total_steps
                            if self.step % t.log_every == 0 or done:
                                elapsed = time.perf_counter() - t0
                                row = {"step": self.step, "epoch": round(self.step / spe, 4), **last,
                                       "images_per_sec": seen / elapsed if elapsed > 0 else None,
                                       "online_probe_loss": probe_loss_v if count_v else None,
                                       "online_probe_train_top1": 100.0 * probe_correct / probe_count if probe_count else None}
                                if log is not None:
                                    log.write(row)
                                seen, t0, probe_correct, probe_count = 0, time.perf_counter(), 0.0, 0.0
                            if stopping and not done:
                                self.save()
                                raise Interrupted(
                                    f"stopped by {stop['signal'] or 'another rank'} at step {self.step} of "
                                    f"{self.total_steps}; saved {self.ckpt_dir / 'last.pt'}. Run the same command "
                                    "again to resume (train.resume=auto)"
                                )
                            if t.ckpt_every_steps > 0 and self.step % t.ckpt_every_steps == 0 and self.step % spe and not done:
                                self.save()  # (an epoch's end saves below)
                            if done:
                                break
                    if self.step % spe == 0 or self.step >= self.total_steps:
                        final = self.step >= self.total_steps
                        self.save()  # before the monitors: an evaluation killed half-way loses nothing
                        if self.online_eval is not None and (final or (self.step // spe) % t.eval_every == 0):
                            online = self.online_eval(self.method)
                            self.metrics.update(online)
                            if log is not None:
                                log.write({"step": self.step, "epoch": round(self.step / spe, 4), **online})
                            if bar is not None:
                                bar.write(f"epoch {self.step / spe:.2f}: " + ", ".join(
                                    f"{k} {v:.2f}" for k, v in online.items()))
                            D.barrier()
                            if final:
                                self.save()  # the final checkpoint carries the final figures too
                            if log is not None:
                                log.flush_plot()
        finally:
            _ACTIVE.remove(self)
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
                log.flush_plot()  # curves.png, also for a run that stopped early
        skipped = torch.tensor(float(len(getattr(self.loader, "skipped", ()))), device=self.device)
        if D.is_distributed():
            torch.distributed.all_reduce(skipped)
        result = {
            "steps": self.step, "epochs": round(self.step / spe, 4), "global_batch": self.global_batch,
            "skipped_images": int(skipped.item()),
            "world_size": info.world_size, "peak_lr": self.peak_lr, **self.metrics,
            "checkpoint": str(self.ckpt_dir / "last.pt"),
        }
        if info.is_main:
            atomic_write_text(self.out / "pretrain.json", json.dumps({**result, "provenance": provenance()}, indent=2))
        return result


class OnlineEvalFactory:
    """Builds the online evaluator on first use (its loaders cost nothing until then)."""
    def __init__(self, cfg, device, mean, std, train_source):
        self.cfg, self.device, self.mean, self.std = cfg, device, mean, std
        self._eval = None

        d = cfg.data
        self.eval_source = d.eval_source or d.source
        try:  # fail at start, not after the first epoch, when the held-out split is missing or wrong
            held = open_source(self.eval_source, split=d.eval_split)
            check_held_out(train_source, held, hint="name it with data.eval_source=<source>")
        except InfoviewError as exc:
            raise ConfigError(f"{exc}; online monitors read data.eval_split (set train.eval_every=0 to turn them off)") from None

    def __call__(self, method) -> dict:
        if self._eval is None:
            c = self.cfg
            self._eval = OnlineEval(
                c.data.source, c.data.split, c.data.eval_split, c.augment.size, max(c.data.batch_size, 256),
                self.device, self.mean, self.std, num_workers=c.data.num_workers, k=c.monitor.knn_k,
                temperature=c.monitor.knn_t, max_images=c.monitor.max_images, backend=c.data.backend,
                eval_source=self.eval_source, progress=bool(c.train.progress),
            )
        return self._eval(method)


def run(cfg) -> dict:
    try:
        trainer = Trainer(cfg)
        result = trainer.fit()
        # no rank tears the group down while another still writes (rank 0: pretrain.json, curves.png); gloo
        # aborted the process ("terminate called without an active exception") when one left early
        D.barrier()
        return result if trainer.info.is_main else None  # one rank reports
    finally:
        D.teardown()


