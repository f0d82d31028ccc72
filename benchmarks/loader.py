"""Images per second: our ffcv loader against torchvision ImageFolder + DataLoader.

Both read CIFAR-10 train (../shared/data/cifar10/train, 50,000 JPEGs) with the
same number of workers and deliver uint8 (B, 3, 32, 32) batches with labels:
the ffcv loader from a .beton prepared once (cached in a temp dir, not
timed), the baseline by decoding the JPEGs with PIL in DataLoader workers
(PILToTensor: uint8, no float conversion). Our PyTorch backend over the same
JPEG folder is timed too, for reference. Warm-up batches (ffcv compiles its
pipeline then; the DataLoader starts its workers) are not timed.

Prints one JSON line. The machine is shared, so the line carries the load
average before and after.

    python benchmarks/loader.py --workers 2 --batch-size 256 --batches 150 --warmup 10

With the default write mode (smart) CIFAR's 32x32 images are stored raw: the
JPEGs are decoded once, at prepare time, and ffcv's loop is a memcpy. The
jpg mode re-encodes them and decodes every epoch, like the baseline does;
both are timed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10" / "train"


def images_per_second(loader, batches: int, warmup: int) -> tuple[float, int]:
    """Iterate (epoch after epoch) through warmup + batches; time the last ``batches``."""
    seen, done, start = 0, 0, None
    while done < warmup + batches:
        for images, labels in loader:
            if done == warmup:
                start = time.perf_counter()
            if done >= warmup:
                seen += images.shape[0]
            done += 1
            if done == warmup + batches:
                break
    return seen / (time.perf_counter() - start), seen


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ImageFolder root (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="loader workers, both loaders")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=150, help="timed batches per loader")
    p.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    p.add_argument(
        "--write-modes", default="smart,jpg",
        help="comma-separated .beton write modes to time; the first gives the headline ratio "
        "(smart stores 32x32 images raw, decoded once; jpg decodes JPEG every epoch like the baseline)",
    )
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "infoview-bench"))
    p.add_argument("--skip-pytorch-backend", action="store_true", help="time only ffcv and the baseline")
    return p.parse_args(argv)


def prepare_betons(data: Path, modes: list[str], cache: Path, workers: int) -> tuple[dict, dict]:
    """The .beton files: prepared once per (folder, write mode), then reused; not timed. Also the seconds of each
    one prepared now."""
    from infoview.data import BetonFile, open_source, write_beton
    from infoview.errors import InfoviewError

    betons, prepare_seconds = {}, {}
    for mode in modes:
        beton = cache / f"{data.parent.name}_{data.name}_{mode}.beton"
        try:
            BetonFile(beton)
        except InfoviewError:
            summary = write_beton(
                open_source(f"folder:{data}"), beton, write_mode=mode, overwrite=True, num_workers=workers
            )
            prepare_seconds[mode] = summary["seconds"]
        betons[mode] = beton
    return betons, prepare_seconds


def time_loaders(data: Path, betons: dict, args: argparse.Namespace) -> tuple[float, float | None, dict, int]:
    """Images per second of the baseline, of our PyTorch backend (None with --skip-pytorch-backend) and of ffcv
    on each .beton; and how many images ffcv's passes timed."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from infoview.data import build_loader

    baseline_ds = datasets.ImageFolder(str(data), transform=transforms.PILToTensor())
    baseline = DataLoader(
        baseline_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        drop_last=True, persistent_workers=args.workers > 0,
    )
    base_rate, base_n = images_per_second(baseline, args.batches, args.warmup)
    del baseline

    ours_rate = None
    if not args.skip_pytorch_backend:
        ours = build_loader(f"folder:{data}", batch_size=args.batch_size, backend="pytorch", num_workers=args.workers)
        ours_rate, _ = images_per_second(ours, args.batches, args.warmup)
        del ours

    # ffcv last: its compiled pipeline starts thread pools, and forking
    # DataLoader workers after that is what Python warns against
    ffcv_rates = {}
    for mode, beton in betons.items():
        loader = build_loader(
            f"beton:{beton}", batch_size=args.batch_size, backend="ffcv", num_workers=args.workers, seed=0
        )
        ffcv_rates[mode], ffcv_n = images_per_second(loader, args.batches, args.warmup)
        del loader
    return base_rate, ours_rate, ffcv_rates, ffcv_n


def main(argv=None) -> dict:
    args = parse_args(argv)

    import torch

    data = Path(args.data).expanduser().resolve()
    if not data.is_dir():
        raise SystemExit(f"benchmarks/loader.py: no image folder at {data}; pass --data")
    load_before = os.getloadavg()

    modes = [m.strip() for m in args.write_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("raw", "jpg", "smart")]
    if not modes or bad:
        raise SystemExit(f"benchmarks/loader.py: --write-modes takes raw, jpg, smart; got {args.write_modes}")

    betons, prepare_seconds = prepare_betons(data, modes, Path(args.cache_dir), args.workers)
    base_rate, ours_rate, ffcv_rates, ffcv_n = time_loaders(data, betons, args)
    head = modes[0]

    result = {
        "benchmark": "loader",
        "data": str(data),
        "images_timed": ffcv_n,
        "ffcv_img_per_s": round(ffcv_rates[head]),
        "baseline_imagefolder_img_per_s": round(base_rate),
        "ratio_ffcv_over_baseline": round(ffcv_rates[head] / base_rate, 2),
        "ffcv_write_mode": head,
        **{f"ffcv_{m}_img_per_s": round(r) for m, r in ffcv_rates.items() if m != head},
        **{f"ratio_ffcv_{m}_over_baseline": round(r / base_rate, 2) for m, r in ffcv_rates.items() if m != head},
        "pytorch_backend_img_per_s": round(ours_rate) if ours_rate else None,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "warmup": args.warmup,
        "beton_bytes": {m: b.stat().st_size for m, b in betons.items()},
        "prepare_seconds": prepare_seconds or None,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
