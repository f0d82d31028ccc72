"""lightly's own SimCLR training loop, timed: the peer that `infoview pretrain` is compared with end to end.

What a lightly user writes for SimCLR on CIFAR-10 (lightly's CIFAR-10 benchmark
and tutorials): torchvision's ``ImageFolder`` with lightly's ``SimCLRTransform``
(input 32, colour strength 0.5, no blur: two augmented views per image, made
per image in the workers), a torch ``DataLoader`` on all cores (shuffled,
pinned, persistent workers), lightly's ``NTXentLoss`` (temperature 0.5), plain
``torch.optim.SGD``. The model is the one infoview trains with the same preset
(``infoview/configs/simclr_infonce_cifar10_1gpu.yaml``: the ResNet-18 with the CIFAR stem
and the 512-512-128 projection head, built by infoview so that both sides run
the same network), at the same batch and precision (bf16 autocast on a GPU),
channels-last on a GPU as ours: the peer is not handicapped.

Images per second = batch x timed steps / seconds after ``--warmup`` untimed
steps (CUDA synchronised at both ends); peak GPU memory is
``torch.cuda.max_memory_allocated`` over the timed steps. Prints one JSON line.

    python benchmarks/lightly_simclr.py --data ../shared/data/cifar10/train --device cuda
    python benchmarks/lightly_simclr.py --data ../shared/data/cifar10/train --steps 3 --warmup 1 --batch 32  # CPU

lightly is needed for this script only (``pip install --no-deps lightly``); it is
not an infoview dependency. Without it the script stops with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = "simclr_infonce_cifar10_1gpu"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, required=True, help="an ImageFolder: one subfolder of images per class")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (workers start, cuDNN picks)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (all cores)")
    ap.add_argument("--temperature", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 2:
        ap.error("--steps >= 1, --warmup >= 0 and --batch >= 2")
    if not args.data.is_dir():
        ap.error(f"--data {args.data} is not a folder")
    return args


def peer_parts():
    try:
        from lightly.loss import NTXentLoss
        from lightly.transforms import SimCLRTransform
    except ImportError as exc:
        sys.exit(f"benchmarks/lightly_simclr.py: error: lightly is not installed ({exc}); "
                 "pip install --no-deps lightly")
    import lightly

    return lightly.__version__, SimCLRTransform, NTXentLoss


def our_model(device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The preset's encoder and projection head, as infoview builds them."""
    from infoview.backbones.encoder import build_encoder_from_config
    from infoview.commands import build_config
    from infoview.models.heads import projector

    _, cfg = build_config("pretrain", ["--config", PRESET])
    m = cfg.model
    encoder = build_encoder_from_config(m, cfg.augment.size, cfg.augment.normalize)
    head = projector(encoder.feature_dim, m.proj_hidden, m.proj_dim, m.proj_layers, m.proj_bn, m.proj_last_bn)
    model = torch.nn.Sequential(encoder, head).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def main(argv=None) -> dict:
    args = parse_args(argv)
    version, SimCLRTransform, NTXentLoss = peer_parts()
    import torchvision

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dataset = torchvision.datasets.ImageFolder(
        str(args.data), transform=SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0))
    if len(dataset) < args.batch:
        sys.exit(f"benchmarks/lightly_simclr.py: error: {args.data} holds {len(dataset)} images, fewer than a batch")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=cuda,
        persistent_workers=args.workers > 0, **({"prefetch_factor": 4} if args.workers > 0 else {}))
    torch.manual_seed(0)
    model = our_model(device, channels_last=cuda)
    criterion = NTXentLoss(temperature=args.temperature)
    opt = torch.optim.SGD(model.parameters(), lr=0.24, momentum=0.9, weight_decay=5e-4)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    log(f"lightly {version}: {len(dataset)} images, batch {args.batch}, {args.workers} workers, on {device}")

    def batches():
        while True:
            yield from loader

    it = batches()
    done, t0 = 0, None
    while done < args.warmup + args.steps:
        if done == args.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        (x0, x1), _ = next(it)
        x0 = x0.to(device, non_blocking=True, memory_format=fmt)
        x1 = x1.to(device, non_blocking=True, memory_format=fmt)
        with torch.autocast(**amp):
            loss = criterion(model(x0).float(), model(x1).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "benchmark": "lightly_simclr", "lightly": version, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu", "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "workers": args.workers,
        "images_per_s": round(args.batch * args.steps / seconds, 1),
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "precision": "bf16" if cuda else "fp32", "loss": round(loss.item(), 4), "torch": torch.__version__,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
