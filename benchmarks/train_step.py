"""Images per second of a pretraining step: real data and views against ready-made tensors (model only).

One ``infoview.pretrain.engine.Trainer`` (one model, one optimizer) is timed
two ways in the same process:

- **pipeline**: what ``infoview pretrain`` does per step: the next batch from
  ``trainer.loader`` (uint8 on the device), ``trainer.make_views`` (the views
  on the device), ``trainer.train_step``. When the loader's epoch ends the next
  one starts, as in training; each pipeline pass starts a fresh epoch and its
  first ``--warmup`` steps are not timed.
- **model only**: ``trainer.train_step`` on the views of one batch made once,
  before the pass, and kept on the device: no loading, no views.

``ratio`` = pipeline img/s / model-only img/s; ``data_share`` = 1 - ratio is
the share of the step's time that the data pipeline costs (loader and views,
as far as they do not overlap with the model). Images per second = global
batch x timed steps / seconds, CUDA synchronised before each clock read. The
passes are interleaved, model only first and last (M, P, M, and with
``--repeats N`` M, then N x (P, M)); each figure is the mean of its passes,
so load from other jobs on a shared machine does not favour one side. Every
pass has its own untimed warm-up steps (they also let the loader's workers
finish the batches they had queued before a model-only pass is timed).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps
of each pass (reset before each, max over the passes of a kind); on a CPU the
process's max RSS (``getrusage``: never reset, so the model-only figure is
read after the first pass, before any pipeline pass, and the pipeline figure
is the max over everything; the loader's worker processes are not in it).

Cases (``--case``) set the standard measurements; ``--config`` and ``--set``
apply on top (a case starts from its preset, or engine defaults, unless ``--config`` is given):

- ``r18-32``: the one-GPU CIFAR-10 preset (``simclr_infonce_cifar10_1gpu``:
  ResNet-18 with the CIFAR stem at 32 px, batch 512, the split held on the
  device: ``data.backend=resident``) on the CIFAR-10 JPEGs
  (``../shared/data/cifar10``; scikit-learn's digits when that is missing).
- ``r50-224``: ResNet-50 at 224 px on real photos: COCO128's train2017 JPEGs
  (``../shared/data/coco128``; CIFAR-10, then digits, when missing), their
  bytes read by the loader's workers and decoded on the device
  (``data.decode=device``: nvJPEG on a GPU), resized to 256 px there, views
  of 224 px. COCO128 has 128 photos, fewer than one batch, so the source
  repeats them until an epoch has ``--min-epoch-steps`` steps (1000 here): the
  decode cost per image is that of real photos, and no epoch ends inside a
  timed pass, as on ImageNet.

Both cases read with ``data.num_workers`` = min(cores, 8). The benchmark sets
``train.eval_every=0``, ``train.progress=false``, ``train.ckpt_every_steps=0``
(nothing but steps runs), ``train.max_steps`` = 10**9 and
``optim.warmup_epochs=0`` (the learning rate at its peak rather than ~0; a
non-finite loss, which would skip the backward pass, stops the benchmark), and
writes the run folder to a temp dir.

CPU settings: unless --no-env-tuning, OMP_WAIT_POLICY=PASSIVE and
THP_MEM_ALLOC_ENABLE=1 are set (when not already set) before torch starts, as
in ``benchmarks/views.py``; they are recorded in the output.

Prints one JSON line (progress goes to stderr).

    python benchmarks/train_step.py --config demo --steps 5 --warmup 2
    python benchmarks/train_step.py --case r18-32          # on a GPU
    python benchmarks/train_step.py --case r50-224         # on a GPU
    python benchmarks/train_step.py --case r18-32 --set data.batch_size=64 --steps 5 --warmup 1   # CPU, small
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

TUNED_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
if __name__ == "__main__" and "--no-env-tuning" not in sys.argv:
    for _k, _v in TUNED_ENV.items():  # must happen before torch is imported
        os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from infoview.data.sources import ImageSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR10 = SHARED_DATA / "cifar10"
COCO128_IMAGES = SHARED_DATA / "coco128" / "images" / "train2017"
COCO128_ANN = SHARED_DATA / "coco128" / "annotations" / "instances_train2017.json"
CASES = ("r18-32", "r50-224")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def case_settings(case: str) -> tuple[str | None, list[str], int]:
    """The preset of a standard case (None: engine defaults), its overrides, and its --min-epoch-steps."""
    workers = min(os.cpu_count() or 1, 8)
    if case == "r18-32":
        source = f"folder:{CIFAR10}" if (CIFAR10 / "train").is_dir() else "digits"
        return "simclr_infonce_cifar10_1gpu", [f"data.source={source}", "data.resolution=0",
                                               f"data.num_workers={workers}"], 0
    if case == "r50-224":
        if COCO128_IMAGES.is_dir() and COCO128_ANN.is_file():
            source = f"coco:{COCO128_IMAGES}:{COCO128_ANN}"
        elif (CIFAR10 / "train").is_dir():
            source = f"folder:{CIFAR10}"
        else:
            source = "digits"
        decode = [] if source == "digits" else ["data.decode=device"]
        return None, [f"data.source={source}", "data.resolution=256", f"data.num_workers={workers}", *decode,
                      "model.arch=resnet50", "model.cifar_stem=false", "augment.size=224"], 1000
    raise SystemExit(f"benchmarks/train_step.py: unknown --case {case}; cases: {', '.join(CASES)}")


# --------------------------------------------------------------------------- a small source, repeated


class RepeatedSource(ImageSource):
    """``source``'s images ``times`` times over (index i reads image i mod n): epochs as long as a big dataset's."""

    def __init__(self, source: ImageSource, times: int):
        self.base, self.times = source, int(times)
        self.name = f"{source.name} (x{self.times})"
        self.split, self.classes, self.image_size = source.split, source.classes, source.image_size

    def __len__(self) -> int:
        return len(self.base) * self.times

    def load(self, index: int):
        return self.base.load(index % len(self.base))

    def describe(self, index: int) -> str:
        return self.base.describe(index % len(self.base))

    def read_bytes(self, index: int):
        return self.base.read_bytes(index % len(self.base))

    def labels(self) -> np.ndarray:
        return np.tile(self.base.labels(), self.times)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes


def training_source(cfg, min_epoch_steps: int, record: dict):
    """``data.source``, repeated until an epoch holds ``min_epoch_steps`` steps (None: as it is)."""
    from infoview.data import open_source

    if min_epoch_steps <= 0:
        return None
    src = open_source(cfg.data.source, split=cfg.data.split)
    global_batch = int(cfg.data.batch_size)
    if len(src) // global_batch >= min_epoch_steps:
        return None
    record["repeat"] = math.ceil(min_epoch_steps * global_batch / len(src))
    return RepeatedSource(src, record["repeat"])


# --------------------------------------------------------------------------- timing


class NonFiniteLoss(RuntimeError):
    pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_step(trainer, views, labels) -> None:
    lr, stats, _ = trainer.train_step(views, labels)
    if stats.nonfinite:
        raise NonFiniteLoss(
            f"the loss is not finite (loss={stats.loss}) at step {trainer.step}: train_step then skips the backward "
            "pass and the figures would be wrong; lower optim.lr (--set optim.lr=...) or give "
            "--set optim.warmup_epochs=..."
        )
    trainer.step += 1


def endless(loader):
    """Batches epoch after epoch (each iteration of the loader is the next epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yielded no batch in an epoch")


def time_model_only(trainer, images_cpu, labels_cpu, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds for ``steps`` train steps on one batch's views, made once; and the peak memory (MB)."""
    device = trainer.device
    images = images_cpu.to(device)
    labels = labels_cpu.to(device)
    fixed = trainer.make_views(images)
    del images
    for _ in range(warmup):
        one_step(trainer, fixed, labels)
    sync(device)
    reset_peak(device)
    t = time.perf_counter()
    for _ in range(steps):
        one_step(trainer, fixed, labels)
    sync(device)
    seconds = time.perf_counter() - t
    peak = peak_mb(device)
    del fixed, labels
    return seconds, peak


def time_pipeline(trainer, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds for ``steps`` steps of loader -> views -> train step, from a fresh epoch; and the peak memory (MB)."""
    device = trainer.device
    batches = endless(trainer.loader)
    try:
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                reset_peak(device)
                t = time.perf_counter()
            images, labels = next(batches)
            one_step(trainer, trainer.make_views(images), labels)
            del images, labels
        sync(device)
        seconds = time.perf_counter() - t
    finally:
        batches.close()
    return seconds, peak_mb(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({torch.get_num_threads()} threads{', ' + model if model else ''})"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None,
                    help="preset name (infoview/configs/) or YAML path; default demo, or engine defaults with --case")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, repeatable (e.g. --set model.arch=resnet50); applied last")
    ap.add_argument("--case", choices=CASES, default=None, help="a standard case (see the module docstring)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per pass")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each pass")
    ap.add_argument("--repeats", type=int, default=1,
                    help="pipeline passes; model-only passes are one more, before and after each (M, P, M, ...)")
    ap.add_argument("--device", default="auto", help="train.device: auto, cpu, cuda, cuda:N")
    ap.add_argument("--min-epoch-steps", type=int, default=None,
                    help="repeat a source with fewer images until an epoch has this many steps "
                         "(0: never; default 1000 for r50-224, else 0)")
    ap.add_argument("--no-env-tuning", action="store_true",
                    help="leave OMP_WAIT_POLICY and THP_MEM_ALLOC_ENABLE as the environment has them")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        ap.error("--steps and --repeats must be >= 1, --warmup >= 0")
    for item in args.overrides:
        if "=" not in item:
            ap.error(f"--set takes key=value, got '{item}'")
    return args


def time_passes(trainer, steps: int, warmup: int, repeats: int) -> tuple[list[float], ...]:
    """The interleaved passes (M, P, M, ...): seconds and peak memory of each, model only and pipeline."""
    batches = endless(trainer.loader)  # one batch for the model-only passes
    images, labels = next(batches)
    batches.close()
    images_cpu, labels_cpu = images.cpu(), labels.cpu()
    del images, labels
    model_s, model_peaks, pipe_s, pipe_peaks = [], [], [], []

    def model_pass():
        s, peak = time_model_only(trainer, images_cpu, labels_cpu, steps, warmup)
        model_s.append(s)
        model_peaks.append(peak)
        log(f"  model only: {trainer.global_batch * steps / s:9.1f} img/s ({s:.2f} s)")

    model_pass()
    for _ in range(repeats):
        s, peak = time_pipeline(trainer, steps, warmup)
        pipe_s.append(s)
        pipe_peaks.append(peak)
        log(f"  pipeline:   {trainer.global_batch * steps / s:9.1f} img/s ({s:.2f} s)")
        model_pass()
    return model_s, model_peaks, pipe_s, pipe_peaks


def result(args, cfg, trainer, timings: tuple[list[float], ...], preset: str | None, overrides: list[str],
           record: dict, load_before: tuple[float, ...]) -> dict:
    """The JSON line: images per second of both kinds of pass, their ratio, peak memory, and the setup."""
    model_s, model_peaks, pipe_s, pipe_peaks = timings
    device = trainer.device
    n = trainer.global_batch * args.steps
    model_runs = [n / s for s in model_s]
    pipe_runs = [n / s for s in pipe_s]
    model_ips = statistics.mean(model_runs)
    pipe_ips = statistics.mean(pipe_runs)
    ratio = pipe_ips / model_ips
    loader = trainer.loader
    return {
        "benchmark": "train_step",
        "case": args.case or "custom",
        "device": device_name(device),
        "arch": str(cfg.model.arch),
        "size": int(cfg.augment.size),
        "global_batch": trainer.global_batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "pipeline_img_per_s": round(pipe_ips, 1),
        "model_only_img_per_s": round(model_ips, 1),
        "ratio": round(ratio, 3),
        "data_share": round(1 - ratio, 3),
        "pipeline_runs_img_per_s": [round(x, 1) for x in pipe_runs],
        "model_only_runs_img_per_s": [round(x, 1) for x in model_runs],
        # CPU: max RSS only grows, so model only is read after the first pass (before any pipeline pass)
        "peak_mem_mb_pipeline": round(max(pipe_peaks) if device.type == "cuda" else pipe_peaks[-1], 1),
        "peak_mem_mb_model_only": round(max(model_peaks) if device.type == "cuda" else model_peaks[0], 1),
        "peak_mem_kind": ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                          "process max RSS (getrusage; never reset: model only after the first pass, pipeline "
                          "the max over all; loader worker processes not included)"),
        "loader_backend": f"{loader.backend} ({getattr(loader, 'num_workers', 0)} workers"
                          + (", decoded on the device)" if getattr(loader, "decoder", None) else ")"),
        "data": str(cfg.data.source) + (f" repeated x{record['repeat']}" if "repeat" in record else ""),
        "loader_resolution": loader.resolution,
        "steps_per_epoch": trainer.steps_per_epoch,
        "views": f"{cfg.augment.recipe}, {len(trainer.views.specs)} views, {cfg.augment.backend} backend",
        "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
        "channels_last": trainer.channels_last,
        "compile": cfg.train.compile_mode if cfg.train.compile else False,
        "optimizer_fused": bool(trainer.optimizer.defaults.get("fused")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in TUNED_ENV},
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "preset": preset,
        "config": overrides,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    from infoview.commands import build_config
    from infoview.errors import InfoviewError
    from infoview.pretrain.engine import Trainer
    from infoview.training import distributed as D

    case_preset, case_overrides, case_min_steps = case_settings(args.case) if args.case else (None, [], 0)
    preset = args.config if args.config is not None else (case_preset if args.case else "demo")
    min_epoch_steps = args.min_epoch_steps if args.min_epoch_steps is not None else case_min_steps
    fixed_overrides = ["train.eval_every=0", "train.progress=false", "train.ckpt_every_steps=0",
                       f"train.max_steps={10**9}", "optim.warmup_epochs=0", f"train.device={args.device}"]
    overrides = [*fixed_overrides, *case_overrides, *args.overrides]

    load_before = os.getloadavg()
    record: dict = {}
    with tempfile.TemporaryDirectory(prefix="infoview-bench-train-step-") as tmp:
        try:
            _, cfg = build_config("pretrain", [*(["--config", preset] if preset else []),
                                               f"out_dir={Path(tmp) / 'run'}", *overrides])
            trainer = Trainer(cfg, source=training_source(cfg, min_epoch_steps, record))
        except InfoviewError as exc:
            raise SystemExit(f"benchmarks/train_step.py: {exc}") from None
        try:
            trainer.method.train()
            log(f"train_step: {cfg.model.arch} at {cfg.augment.size} px, global batch {trainer.global_batch}, "
                f"{cfg.data.source}, {trainer.loader!r}, on {device_name(trainer.device)}")
            timings = time_passes(trainer, args.steps, args.warmup, args.repeats)
        except NonFiniteLoss as exc:
            raise SystemExit(f"benchmarks/train_step.py: {exc}") from None
        finally:
            D.teardown()
        out = result(args, cfg, trainer, timings, preset, overrides, record, load_before)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
