"""What a run reports while it trains: metrics.csv, TensorBoard, and online evaluation.

Names: everything measured during pretraining is an *online* monitor and
carries the ``online_`` prefix (``online/`` in TensorBoard): the kNN top-1 on
features of the held-out split and the accuracy of the linear probe that
trains beside the encoder on detached features. Offline evaluation of a
finished encoder (``infoview linear``, ``infoview knn``) writes its own files
under its own names; the two are never mixed.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from infoview.backbones.features import extract_features
from infoview.backbones.knn import knn_accuracy
from infoview.data import build_loader, check_held_out, open_source
from infoview.data.resident import cap_bytes
from infoview.errors import ConfigError, InfoviewError
from infoview.training import distributed as D
from infoview.training.components import Component
from infoview.training.metrics import MetricsLog
from infoview.utils.io import save_figure

COLUMNS = (
    "step", "epoch", "loss", "mi", "mi_ceiling", "mi_estimate", "lr", "images_per_sec",
    "online_probe_loss", "online_probe_train_top1", "online_knn_top1", "online_probe_top1",
)


def metrics_log(out_dir: str | os.PathLike, start_step: int = 0, tensorboard: bool = True) -> MetricsLog:
    """A pretraining run's log: its :data:`COLUMNS`, and ``curves.png`` redrawn by :func:`plot_curves`."""
    return MetricsLog(out_dir, COLUMNS, start_step=start_step, tensorboard=tensorboard, plot=plot_curves)


class OnlineEval:
    """kNN top-1 and the online probe's top-1 on the held-out split, from frozen features.

    The kNN bank is the training split without augmentation (centre crop at the
    view size), as in the DINO and solo-learn evaluations. ``max_images`` caps
    each split at a fixed random subset (the same images every time), not the
    first images of a folder sorted by class.
    """

    def __init__(self, source: str, train_split: str, eval_split: str, size: int, batch_size: int, device,
                 mean, std, num_workers: int = 0, k: int = 200, temperature: float = 0.07, max_images: int = 0,
                 backend: str = "auto", eval_source: str | None = None, progress: bool = False,
                 decode: str = "workers", resident_cap: int | None = None):
        kw = dict(batch_size=batch_size, shuffle=bool(max_images), seed=0, drop_last=False, device=device,
                  num_workers=num_workers, resolution=size, backend=backend, decode=decode,
                  resident_cap=resident_cap)
        self.train_loader = build_loader(source, split=train_split, **kw)
        self.eval_loader = build_loader(eval_source or source, split=eval_split, **kw)
        self.mean, self.std = mean, std
        self.k, self.temperature = k, temperature
        self.max_images = max_images or None
        self.device = device
        self.progress = progress

    @torch.no_grad()
    def __call__(self, method) -> dict:
        self.train_loader.set_epoch(0)  # the same subset and order every time
        self.eval_loader.set_epoch(0)
        ftr, ytr = extract_features(method.encoder, self.train_loader, self.mean, self.std, device=self.device,
                                    max_images=self.max_images, progress=self.progress, desc="online kNN: train")
        fte, yte = extract_features(method.encoder, self.eval_loader, self.mean, self.std, device=self.device,
                                    max_images=self.max_images, progress=self.progress, desc="online kNN: held-out")
        out: dict = {}
        if (ytr >= 0).all() and len(ytr):
            out["online_knn_top1"] = knn_accuracy(ftr, ytr, fte, yte, k=self.k, temperature=self.temperature)["top1"]
        probe = getattr(method, "probe", None)
        known = yte >= 0
        if probe is not None and known.any():
            logits = probe(fte[known].to(probe.weight.device, probe.weight.dtype))
            out["online_probe_top1"] = 100.0 * (logits.argmax(1).cpu() == yte[known]).float().mean().item()
        return out


def plot_curves(out_dir: str | os.PathLike) -> Path | None:
    """``curves.png`` beside ``metrics.csv``: the run at a glance, for whoever does not open TensorBoard.

    Four panels against step: the loss; the certified MI bound with its ceiling
    and the training rows' (uncertified) estimate; the learning rate; the
    online kNN and probe accuracies. Returns the path, or None before any row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get("step")]
        return [p[0] for p in pts], [p[1] for p in pts]

    if not series("loss")[0]:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100, sharex=True)
    (a_loss, a_mi), (a_lr, a_acc) = axes
    a_loss.plot(*series("loss"), lw=1.2)
    a_loss.set_title("training loss")
    a_mi.plot(*series("mi"), lw=1.4, label="mi: certified bound")
    steps, ceil = series("mi_ceiling")
    if steps:
        a_mi.plot(steps, ceil, ls="--", color="0.4", lw=1.0, label="its ceiling")
    a_mi.plot(*series("mi_estimate"), ls=":", lw=1.0, label="mi_estimate: training rows, not a bound")
    a_mi.set_title("mutual information (nats)")
    a_mi.legend(fontsize=8, loc="center right")
    a_lr.plot(*series("lr"), lw=1.2, color="C2")
    a_lr.set_title("learning rate")
    a_lr.set_xlabel("step")
    for key, label in (("online_knn_top1", "kNN top-1 (held-out)"), ("online_probe_top1", "probe top-1 (held-out)"),
                       ("online_probe_train_top1", "probe top-1 (training batches)")):
        x, y = series(key)
        if x:
            a_acc.plot(x, y, marker="o" if key != "online_probe_train_top1" else None, ms=3, lw=1.2, label=label)
    a_acc.set_title("online monitors (%)")
    a_acc.set_xlabel("step")
    if a_acc.lines:
        a_acc.legend(fontsize=8, loc="lower right")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(str(Path(out_dir)), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / "curves.png")


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
                decode=c.data.decode, resident_cap=cap_bytes(c.data.resident_cap_gb),
                eval_source=self.eval_source, progress=bool(c.train.progress),
            )
        return self._eval(method)


class Report(Component):
    """What rank 0 writes while a run trains: metrics.csv rows, the online figures, curves.png; and the
    figures the progress bar shows (:meth:`postfix`). A component of the fit loop: it is handed each step
    (``StepEnd``, whose figures are a ``StepStats``) and holds nothing of the trainer or the loop.

    ``figures``: the dict of the run's latest figures (saved in checkpoints and pretrain.json), updated every
    step; ``main``: this is rank 0 (other ranks write nothing); ``start_step``: the step a resumed run starts
    at; a row every ``log_every`` steps and after the last.
    """

    def __init__(self, out_dir, start_step: int, steps_per_epoch: int, global_batch: int, log_every: int, *,
                 figures: dict, main: bool, progress: bool):
        self.spe, self.global_batch, self.log_every, self.figures = steps_per_epoch, global_batch, log_every, figures
        self.log = metrics_log(out_dir, start_step=start_step) if main else None
        self.progress = main and progress
        self._reset()

    def _reset(self) -> None:
        self.seen, self.t0, self.probe_correct, self.probe_count = 0, time.perf_counter(), 0.0, 0.0

    def step_end(self, end) -> None:
        """The step's figures kept; a metrics.csv row (rates since the last row) every ``log_every`` steps."""
        stats, ceiling = end.figures, end.output[1].ceiling
        last = {"loss": stats.loss, "mi": stats.mi if math.isfinite(stats.mi) else None,  # None: no bound
                "mi_estimate": stats.mi_estimate, "lr": end.lr,
                "mi_ceiling": ceiling if math.isfinite(ceiling) else None}
        self.figures.update(last)
        self.seen += self.global_batch
        self.probe_correct += stats.probe_correct
        self.probe_count += stats.probe_count
        if end.step % self.log_every and not end.last:
            return
        elapsed = time.perf_counter() - self.t0
        row = {"step": end.step, "epoch": round(end.step / self.spe, 4), **last,
               "images_per_sec": self.seen / elapsed if elapsed > 0 else None,
               "online_probe_loss": stats.probe_loss if stats.probe_count else None,
               "online_probe_train_top1": 100.0 * self.probe_correct / self.probe_count if self.probe_count else None}
        if self.log is not None:
            self.log.write(row)
        self._reset()

    @staticmethod
    def postfix(end) -> dict:
        """The bar's figures: the loss, the bound over its ceiling, the lr."""
        return dict(loss=f"{end.loss:.3f}", mi=f"{end.figures.mi:.2f}/{end.output[1].ceiling:.2f}", lr=f"{end.lr:.3g}")

    def online(self, step: int, online: dict) -> None:
        if self.log is not None:
            self.log.write({"step": step, "epoch": round(step / self.spe, 4), **online})
        if self.progress:
            tqdm.write(f"epoch {step / self.spe:.2f}: " + ", ".join(f"{k} {v:.2f}" for k, v in online.items()))

    def plot(self) -> None:
        if self.log is not None:
            self.log.flush_plot()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log.flush_plot()  # curves.png, also for a run that stopped early


class OnlineMonitors(Component):
    """The online monitors at an epoch's end, every ``every`` epochs and after the last step (0: never): the
    kNN and probe top-1 of ``method`` (``evaluate``: rank 0's :class:`OnlineEvalFactory`; None on the other
    ranks, which wait at a barrier meanwhile), kept in ``figures`` and written by ``report``; then curves.png.
    The loop saves the run before them and, at the end, after them."""

    def __init__(self, evaluate: OnlineEvalFactory | None, every: int, steps_per_epoch: int, report: Report,
                 method, figures: dict):
        self.evaluate, self.every, self.spe, self.report = evaluate, every, steps_per_epoch, report
        self.method, self.figures = method, figures

    def wants_epoch_end(self, at, final: bool) -> bool:
        return self.every > 0 and (final or (at.step // self.spe) % self.every == 0)

    def epoch_end(self, at, final: bool) -> None:
        if self.evaluate is not None:  # rank 0
            online = self.evaluate(self.method)
            self.figures.update(online)
            self.report.online(at.step, online)
        D.barrier()  # every rank decides alike: the others wait here for rank 0's evaluation
        self.report.plot()  # (rank 0's)
