"""``backend="resident"``: a split of small images held as one uint8 tensor on the training device.

Why: for CIFAR-sized images a GPU trains faster than loader workers can
decode and ship them (a PyTorch loader on 8 workers fed a ResNet-18 at 32 px
0.58 of its own speed on an H200: docs/gpu/h200_2026-11-30.md). Decoded
once, CIFAR-10's 50,000 training images are 154 MB, which any accelerator
holds; each batch is then one index gather on the device, with no copy over
PCIe and no worker in the loop.

The contract is the loader's (``infoview.data.loader``): for a seed, an epoch,
a resume position and a DDP rank, the same batches, labels and image indices
as the other backends, in the same order (``shard_order``); images are
decoded once by the same code (``_DecodeOnce``: ``fit_square`` to the
resolution, ``skip_bad`` replacing an unreadable image by the next readable
one, which then carries its own index). Only where the bytes live differs.
Under DDP every rank holds the whole split and gathers its own shard.

Memory: the split needs N x resolution^2 x 3 bytes. Before anything is
decoded that is checked against a cap (``resident_cap`` bytes; by default a
third of a GPU's memory, a quarter of the machine's RAM on a CPU); a split
above it is refused with one line naming both. Two loaders of the same split
at the same resolution on the same device (the training loader and the online
kNN's) share one tensor.
"""
from __future__ import annotations

import os
import sys
import time
import weakref
from typing import Iterator

import numpy as np
import torch

from infoview.data.loader import _Base, _collate, _DecodeOnce
from infoview.data.sources import ArraySource, ImageSource
from infoview.errors import InfoviewError

#: decoding batch: images decoded per worker round trip
DECODE_BATCH = 512
_SHARED: "weakref.WeakValueDictionary[tuple, ResidentSplit]" = weakref.WeakValueDictionary()


def default_cap(device: torch.device) -> int:
    """Bytes a resident split may take by default: a third of a GPU's memory, a quarter of the RAM on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 3
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 4 << 30


def cap_bytes(gb: float) -> int | None:
    """A cap given in GB (``data.resident_cap_gb``) in bytes; None, the default cap, for 0."""
    return int(float(gb) * 1e9) or None


def _gb(n: int) -> str:
    """``153,600,000 bytes (154 MB)``."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)) if n >= s), ("bytes", 1))
    return f"{n:,} bytes ({n / scale:.3g} {unit})"


class ResidentSplit:
    """One split decoded once: images (N, r, r, 3) uint8, labels (N,) and the index each slot holds, on a device."""

    def __init__(self, source: ImageSource, resolution: int, device: torch.device, *, num_workers: int,
                 skip_bad: bool, cap: int):
        n, r = len(source), resolution
        need = n * r * r * 3
        if need > cap:
            raise InfoviewError(
                f"data.backend=resident: {source.name} ({source.split or 'one split'}) needs {_gb(need)} on {device} "
                f"({n} images x {r} x {r} x 3), above the cap of {_gb(cap)} (data.resident_cap_gb); lower "
                "data.resolution, raise the cap, or use data.backend=pytorch"
            )
        t0 = time.perf_counter()
        self.skipped: set[int] = set()
        self.images = torch.empty((n, r, r, 3), dtype=torch.uint8, device=device)
        self.labels = torch.empty(n, dtype=torch.int64, device=device)
        self.read_index = torch.empty(n, dtype=torch.int64, device=device)
        if isinstance(source, ArraySource) and source.image_size == (r, r):
            self.images.copy_(torch.from_numpy(source.images))  # already decoded at this size: one copy
            self.labels.copy_(torch.from_numpy(source.labels()))
            self.read_index.copy_(torch.arange(n))
        else:
            self._decode(source, r, num_workers, skip_bad)
        self.seconds = time.perf_counter() - t0
        self.nbytes = need

    def _decode(self, source: ImageSource, r: int, num_workers: int, skip_bad: bool) -> None:
        """Every image once, through the PyTorch backend's decoder, in source order."""
        extra = {"prefetch_factor": 2} if num_workers > 0 else {}
        loader = torch.utils.data.DataLoader(
            _DecodeOnce(source, r, skip_bad), batch_size=DECODE_BATCH, shuffle=False, num_workers=num_workers,
            collate_fn=_collate, pin_memory=self.images.device.type == "cuda", **extra,
        )
        start = 0
        try:
            for images, labels, bad, indices in loader:
                end = start + len(labels)
                self.images[start:end].copy_(images, non_blocking=True)
                self.labels[start:end].copy_(labels, non_blocking=True)
                self.read_index[start:end].copy_(indices, non_blocking=True)
                for i in bad.tolist():
                    self.skipped.add(i)
                    print(f"infoview: skipped unreadable image {source.describe(i)} (data.skip_bad=true; "
                          f"{len(self.skipped)} so far)", file=sys.stderr, flush=True)
                start = end
        except InfoviewError as exc:  # from a worker: its message, without the worker's traceback
            raise InfoviewError(str(exc).strip().splitlines()[-1].split("InfoviewError: ", 1)[-1]) from None


def resident_split(source: ImageSource, resolution: int, device: torch.device, *, num_workers: int,
                   skip_bad: bool, cap: int | None) -> ResidentSplit:
    """The split held on ``device``, decoded now or shared with a loader that already holds it."""
    key = (source.name, source.split, len(source), resolution, str(device), bool(skip_bad))
    held = _SHARED.get(key)
    if held is None:
        held = ResidentSplit(source, resolution, device, num_workers=num_workers, skip_bad=skip_bad,
                             cap=default_cap(device) if cap is None else int(cap))
        _SHARED[key] = held
    return held


class ResidentLoader(_Base):
    """Batches gathered on the device from a :class:`ResidentSplit`, in the loaders' shared order."""

    backend = "resident"

    def __init__(self, source: ImageSource, batch_size: int, *, num_workers: int, skip_bad: bool = False,
                 cap: int | None = None, **kw):
        super().__init__(source, batch_size, **kw)
        self.num_workers = int(num_workers)
        self.split = resident_split(source, self.resolution, self.device, num_workers=self.num_workers,
                                    skip_bad=skip_bad, cap=cap)
        self.skipped = self.split.skipped

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self._order(self._next_epoch, len(self.source), self._take_start())
        self._next_epoch += 1
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        order_t = torch.from_numpy(np.ascontiguousarray(order)).to(self.device, non_blocking=True)
        held = self.split
        for start in range(0, stop, self.batch_size):
            idx = order_t[start : start + self.batch_size]
            images = held.images.index_select(0, idx).permute(0, 3, 1, 2)  # (B, 3, r, r), channels-last memory
            labels = held.labels.index_select(0, idx)
            if self.with_indices:
                yield images, labels, held.read_index.index_select(0, idx)
            else:
                yield images, labels
