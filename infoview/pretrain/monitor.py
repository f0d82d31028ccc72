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
import io
import os
from pathlib import Path

import torch

from infoview.utils.io import atomic_write_text

COLUMNS = (
    "step", "epoch", "loss", "mi", "mi_ceiling", "mi_estimate", "lr", "images_per_sec",
    "online_probe_loss", "online_probe_train_top1", "online_knn_top1", "online_probe_top1",
)


class MetricsLog:
    """``metrics.csv`` (one row per logged step, fixed columns) and TensorBoard events.

    On resume, rows after ``start_step`` (written by the run that was killed
    after its last checkpoint) are dropped, and so are TensorBoard's events
    (``purge_step``), so every step appears once.
    """

    def __init__(self, out_dir: str | os.PathLike, start_step: int = 0, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        buf = io.StringIO()  # a new run starts the file afresh; a resumed one keeps its rows so far
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
        atomic_write_text(self.path, buf.getvalue())
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step if start_step > 0 else None)
            # one chart with the certified bound, its ceiling, and the training rows' (uncertified) value
            self.tb.add_custom_scalars({"MI (nats)": {
                "bound, ceiling, estimate": ["Multiline", ["train/mi", "train/mi_ceiling", "train/mi_estimate"]],
            }})

    def write(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"metrics: unknown columns {sorted(unknown)}")
        self._csv.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        self._file.flush()
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key in ("step",) or value is None:
                    continue
                tag = key.replace("online_", "online/", 1) if key.startswith("online_") else f"train/{key}"
                self.tb.add_scalar(tag, float(value), step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class OnlineEval:
    """kNN top-1 and the online probe's top-1 on the held-out split, from frozen features.

    The kNN bank is the training split without augmentation (centre crop at the
    view size), as in the DINO and solo-learn evaluations. ``max_images`` caps
    each split at a fixed random subset (the same images every time), not the
    first images of a folder sorted by class.
    """

    def __init__(self, source: str, train_split: str, eval_split: str, size: int, batch_size: int, device,
                 mean, std, num_workers: int = 0, k: int = 200, temperature: float = 0.07, max_images: int = 0,
                 backend: str = "auto", eval_source: str | None = None, progress: bool = False):
        from infoview.data import build_loader

        kw = dict(batch_size=batch_size, shuffle=bool(max_images), seed=0, drop_last=False, device=device,
                  num_workers=num_workers, resolution=size, backend=backend)
        self.train_loader = build_loader(source, split=train_split, **kw)
        self.eval_loader = build_loader(eval_source or source, split=eval_split, **kw)
        self.mean, self.std = mean, std
        self.k, self.temperature = k, temperature
        self.max_images = max_images or None
        self.device = device
        self.progress = progress

    @torch.no_grad()
    def __call__(self, method) -> dict:
        from infoview.eval.features import extract_features
        from infoview.eval.knn import knn_accuracy

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
