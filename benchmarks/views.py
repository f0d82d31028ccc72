"""Two-view SimCLR views per second: infoview's batched views against lightly's per-image pipeline.

Ours: ``build_views("simclr", size)`` applied to uint8 batches already on
``--device``. Peer: lightly's ``SimCLRTransform`` (what a user would otherwise
pick) applied per PIL image in ``DataLoader`` workers (all cores by default),
collated into batches as training would. Both get the same images: real
CIFAR-10 JPEGs decoded once into memory (resized to 224 px with PIL bicubic for
the 224 case) and the same recipe: crop scale (0.08, 1), flip 0.5, jitter
(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, and at 224 px blur p 0.5 with sigma
in (0.1, 2); ImageNet normalisation. Each figure is the median of --repeats
timed passes over --images images, ours and the peer's interleaved, because
the CPU may be shared.

CPU settings: unless --no-env-tuning, the script sets OMP_WAIT_POLICY=PASSIVE
and THP_MEM_ALLOC_ENABLE=1 (when not already set) before torch starts; both
pipelines run under them. The first stops OpenMP threads spinning when the
cores are busy (the loader's workers, or other users: without it batched CPU
ops can run 10-30x slower); the second lets torch back large tensors with huge
pages (a fresh 38 MB tensor otherwise costs ~20 ms of page faults). Both are
recorded in the output.

Prints one JSON line (progress goes to stderr). lightly is needed for this
script only: ``pip install lightly``; it is not an infoview dependency.
``--no-peer`` times ours alone, where lightly is not installed (the GPU
machine): the output's peer figures and ratio are then null and ``peer``
says why.

    python benchmarks/views.py                     # CPU, 32 and 224 px
    python benchmarks/views.py --device cuda       # ours on the GPU, peer on the CPU
    python benchmarks/views.py --device cuda --no-peer   # ours only (no lightly installed)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

TUNED_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
if __name__ == "__main__" and "--no-env-tuning" not in sys.argv:
    for _k, _v in TUNED_ENV.items():  # must happen before torch is imported
        os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "train"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_images(folder: Path, n: int):
    from PIL import Image

    if not folder.is_dir():
        sys.exit(f"error: no CIFAR-10 training images at {folder} (expected <class>/*.jpg); pass --data")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.jpg")) for c in classes]
    files = [f for group in zip(*per_class) for f in group][:n]  # round-robin over classes
    if len(files) < n:
        sys.exit(f"error: found {len(files)} JPEGs under {folder}, need --images {n}")
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    return images


def to_uint8_batch(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(views, batch: torch.Tensor, bs: int, device: torch.device) -> float:
    """Seconds for two views of every image; batches are slices of a tensor already on the device."""
    sync(device)
    t = time.perf_counter()
    for i in range(0, batch.shape[0], bs):
        out = views(batch[i : i + bs])
    del out
    sync(device)
    return time.perf_counter() - t


def time_peer(loader) -> float:
    t = time.perf_counter()
    for v1, v2 in loader:
        pass
    return time.perf_counter() - t


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (ours only; the peer runs on CPU workers)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--images", type=int, nargs="+", default=None,
                    help="images per timed pass, one per size (default 4096 at <= 64 px, 1024 above)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="peer DataLoader workers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--no-env-tuning", action="store_true",
                    help="leave OMP_WAIT_POLICY and THP_MEM_ALLOC_ENABLE as the environment has them")
    ap.add_argument("--with-kornia", action="store_true",
                    help="also time infoview's kornia backend (kornia's augmentation modules)")
    ap.add_argument("--no-peer", action="store_true",
                    help="time ours only, without lightly (peer figures and ratio are null in the output)")
    return ap.parse_args(argv)


def peer_transform(no_peer: bool):
    """lightly and its SimCLRTransform; (None, None) under --no-peer."""
    if no_peer:
        return None, None
    try:
        import lightly
        from lightly.transforms import SimCLRTransform
    except ImportError:
        sys.exit("error: this benchmark compares against lightly's SimCLRTransform: pip install lightly "
                 "(or pass --no-peer to time ours alone)")
    return lightly, SimCLRTransform


def images_per_size(sizes: list[int], images: list[int] | None) -> list[int]:
    """--images as one value per size: the default, or one value repeated."""
    n_list = images or [4096 if s <= 64 else 1024 for s in sizes]
    if len(n_list) == 1:
        n_list = n_list * len(sizes)
    if len(n_list) != len(sizes):
        sys.exit("error: give one --images value, or one per --sizes value")
    return n_list


def time_size(size: int, pil: list, args: argparse.Namespace, device: torch.device, peer_cls) -> dict:
    """Views per second at ``size`` px on the images ``pil``: ours, the peer's (``peer_cls``), kornia's if asked."""
    from PIL import Image

    from infoview.augment import build_views

    n = len(pil)
    if size != pil[0].size[0]:
        pil = [im.resize((size, size), Image.BICUBIC) for im in pil]
    u8 = to_uint8_batch(pil).to(device)
    blur = 0.5 if size > 32 else 0.0
    ours = build_views("simclr", size, seed=0)
    kornia_views = build_views("simclr", size, seed=0, backend="kornia") if args.with_kornia else None
    loader = None
    if peer_cls is not None:
        peer = peer_cls(input_size=size, cj_strength=0.5, gaussian_blur=blur)
        loader = torch.utils.data.DataLoader(
            _PILDataset(pil, peer), batch_size=args.batch, num_workers=args.workers,
            persistent_workers=args.workers > 0, shuffle=False,
        )
    # warm up: worker start-up, allocator, oneDNN/cuDNN kernel choice
    time_ours(ours, u8[: args.batch], args.batch, device)
    if loader is not None:
        time_peer(loader)
    t_ours, t_peer, t_kornia = [], [], []
    for r in range(args.repeats):
        t_ours.append(time_ours(ours, u8, args.batch, device))
        if loader is not None:
            t_peer.append(time_peer(loader))
        if kornia_views is not None:
            t_kornia.append(time_ours(kornia_views, u8, args.batch, device))
        log(f"{size}px pass {r + 1}/{args.repeats}: ours {t_ours[-1]:.2f}s"
            + (f"  peer {t_peer[-1]:.2f}s" if t_peer else "")
            + (f"  kornia {t_kornia[-1]:.2f}s" if t_kornia else ""))
    del loader
    ours_vps = 2 * n / statistics.median(t_ours)
    peer_vps = 2 * n / statistics.median(t_peer) if t_peer else None
    row = {
        "images": n,
        "ours_views_per_s": round(ours_vps, 1),
        "peer_views_per_s": round(peer_vps, 1) if peer_vps else None,
        "ratio": round(ours_vps / peer_vps, 2) if peer_vps else None,
    }
    if t_kornia:
        row["ours_kornia_backend_views_per_s"] = round(2 * n / statistics.median(t_kornia), 1)
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    lightly, SimCLRTransform = peer_transform(args.no_peer)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    n_list = images_per_size(args.sizes, args.images)

    cifar = load_images(args.data, max(n_list))
    load_before = os.getloadavg()
    results = {}
    for size, n in zip(args.sizes, n_list):
        results[str(size)] = time_size(size, cifar[:n], args, device, SimCLRTransform)

    out = {
        "benchmark": "views",
        "recipe": "simclr, 2 views",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "peer": (f"lightly {lightly.__version__} SimCLRTransform, per image in {args.workers} DataLoader workers"
                 if lightly is not None else "none (--no-peer): ours only"),
        "batch": args.batch,
        "repeats": args.repeats,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "env": {k: os.environ.get(k) for k in TUNED_ENV},
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
