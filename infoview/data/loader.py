"""Loaders that deliver each image once, as a uint8 batch on the device.

Why decode once and crop on the GPU: a multi-view method needs V random views
of every image (2 for SimCLR, 2 + 6 for multi-crop). Making them on the CPU
means V crops, V resizes and V float conversions per image in the workers,
which is where CPU-bound pretraining spends its time, and V float copies over
PCIe. Here the workers (or ffcv's compiled pipeline) decode and resize each
image once to a fixed size and ship one uint8 image per sample; ``augment``
then makes all V views on the accelerator in a few batched kernels.

``build_loader(source, batch_size, ...)`` returns a loader that yields
``(images, labels)``: images uint8 (B, 3, H, W) (memory may be channels-last)
on the target device, labels int64 (B,). With ``with_indices=True`` it yields
``(images, labels, indices)``: each image's index in the source (int64 (B,),
on the device), what a memory bank keys its rows by. An index names one image
of the split for good: it does not depend on the epoch, the rank, the backend
or a resume, and an image that ``skip_bad`` replaced carries the index of the
image that took its place. Two backends keep that contract:

- ``ffcv``: reads a ``.beton`` (write one with ``infoview prepare``) with
  ffcv's compiled pipeline, ``os_cache`` on by default. ffcv fills a ring of
  reused buffers; we hand out copies, so a batch kept in a list stays intact
  (``reuse_buffers=True`` skips the image copy when every batch is consumed
  before the next few arrive, as in a training step).
- ``pytorch``: a ``DataLoader`` whose workers decode and resize, pinned memory
  when the device is CUDA; reads every source, ``.beton`` included (through
  ``BetonSource``, no ffcv needed). With ``decode="device"`` the workers only
  read each file's bytes and the batch's JPEGs are decoded on the training
  device (``infoview.data.device_decode``: nvJPEG on a GPU).
- ``resident``: the whole split decoded once into one uint8 tensor on the
  training device; a batch is an index gather (``infoview.data.resident``),
  for splits of small images (CIFAR, STL-10, 64 px folders) that fit under a cap.

``backend="auto"`` picks ffcv for a ``beton:`` source when ffcv imports, else
pytorch. Both backends order samples with the same ``DistributedSampler``
logic: for a given seed and epoch, the same order on either backend, and
with ``distributed=True`` each rank gets its own shard (padded by repeating a
few samples when the dataset does not divide evenly, like PyTorch's sampler).
Iterating again moves to the next epoch; ``set_epoch(e)`` picks one, and
``set_epoch(e, start_batch=k)`` starts that epoch at its k-th batch (what a
resumed run needs to continue exactly where it stopped, without reading the
skipped images).

Images whose size differs from ``resolution`` are centre-cropped to a square
(the full shorter side) and resized to ``resolution`` x ``resolution``;
``resolution=None`` keeps the source's own size when all images share it,
else uses the first image's shorter side.
"""
from __future__ import annotations

import os
import sys
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from infoview.data.choices import BACKENDS, DECODES
from infoview.data.sources import ImageSource, open_source
from infoview.errors import InfoviewError
from infoview.utils.device import resolve_device


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``image`` (H, W, 3) to a square and resize it to ``size``."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    image = image[top : top + s, left : left + s]
    if s == size:
        return np.ascontiguousarray(image)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def default_resolution(source: ImageSource) -> int:
    if source.image_size is not None:
        return int(min(source.image_size))
    if len(source) == 0:
        raise InfoviewError(f"{source.name} has no images")
    return int(min(source.load(0)[0].shape[:2]))


def _resolve_ranks(distributed: bool, rank, world_size) -> tuple[int, int]:
    if not distributed and (world_size is None or world_size == 1):
        return 0, 1
    if rank is None or world_size is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise InfoviewError(
                "distributed=True needs torch.distributed initialised, or rank= and world_size= given"
            )
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise InfoviewError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


def shard_order(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The indices rank ``rank`` reads in ``epoch``: PyTorch's DistributedSampler order."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))


class _Base:
    backend = ""

    def __init__(self, source: ImageSource, batch_size: int, *, seed, shuffle, drop_last, rank, world_size, device,
                 resolution, with_indices: bool = False):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise InfoviewError(f"batch_size must be a positive integer, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(device)
        self.resolution = int(resolution) if resolution else default_resolution(source)
        self.classes = source.classes
        self.with_indices = bool(with_indices)
        self._next_epoch = 0
        self._start_batch = 0

    @property
    def dataset_size(self) -> int:
        return len(self.source)

    @property
    def num_samples(self) -> int:
        """Samples this rank reads per epoch (padding included)."""
        return -(-len(self.source) // self.world_size)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration reads ``epoch``'s order (then epoch + 1, ...), from batch ``start_batch`` on.

        ``start_batch`` applies to that one iteration only.
        """
        if not 0 <= start_batch <= len(self):
            raise InfoviewError(f"start_batch must be in [0, {len(self)}] (batches per epoch), got {start_batch}")
        self._next_epoch = int(epoch)
        self._start_batch = int(start_batch)

    def _take_start(self) -> int:
        """The first sample index (into this rank's order) of the coming iteration."""
        start, self._start_batch = self._start_batch * self.batch_size, 0
        return start

    def _order(self, epoch: int, n: int, start: int) -> np.ndarray:
        order = shard_order(
            n, seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size
        )
        return order[start:]

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source.name}, batch_size={self.batch_size}, "
            f"resolution={self.resolution}, rank={self.rank}/{self.world_size}, device={self.device})"
        )


# --------------------------------------------------------------------------- PyTorch


class _DecodeOnce(torch.utils.data.Dataset):
    """Decodes one image; with ``skip_bad`` an unreadable one is replaced by the next readable image.

    Returns ``(image, label, bad, index)``, ``bad`` being the unreadable index that was
    replaced (-1 when none), so that the loader can count and name them, and
    ``index`` the one that was read; the batch keeps its size, which DDP and
    the schedules rely on.
    """

    def __init__(self, source: ImageSource, resolution: int, skip_bad: bool = False):
        self.source, self.resolution, self.skip_bad = source, resolution, skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: int) -> tuple:
        """What a worker hands over for image ``index``: here the image fitted to the resolution, and its label."""
        image, label = self.source.load(index)
        return fit_square(image, self.resolution), label

    def __getitem__(self, index: int):
        index, n = int(index), len(self.source)
        for step in range(n):
            try:
                item = self.read((index + step) % n)
            except InfoviewError as exc:
                if not self.skip_bad:
                    raise InfoviewError(f"{exc}; pass data.skip_bad=true to skip unreadable images") from None
                continue
            return (*item, (index if step else -1), (index + step) % n)
        raise InfoviewError(f"{self.source.name}: no image could be read")


def _collate(batch):
    images = torch.from_numpy(np.stack([b[0] for b in batch]))  # (B, H, W, 3), contiguous
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    bad = torch.tensor([b[2] for b in batch if b[2] >= 0], dtype=torch.int64)
    indices = torch.tensor([b[3] for b in batch], dtype=torch.int64)
    return images, labels, bad, indices


class _OrderSampler(torch.utils.data.Sampler):
    """Yields the order its loader set for the coming epoch (a shard, maybe from a mid-epoch start)."""

    def __init__(self, loader: _Base, n: int):
        self.order = loader._order(0, n, 0)

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


class TorchLoader(_Base):
    """``DataLoader`` backend: workers decode and resize, batches stacked as uint8."""

    backend = "pytorch"

    def __init__(self, source: ImageSource, batch_size: int, *, num_workers: int, prefetch_factor: int = 4,
                 skip_bad: bool = False, decode: str = "workers", **kw):
        super().__init__(source, batch_size, **kw)
        self.sampler = _OrderSampler(self, len(source))
        self.num_workers = int(num_workers)
        self.skipped: set[int] = set()  # indices of unreadable images met so far (with skip_bad)
        self.decoder = None
        dataset, collate = _DecodeOnce(source, self.resolution, skip_bad), _collate
        if decode == "device":
            from infoview.data import device_decode as dd

            dd.check_source(source)
            self.decoder = dd.DeviceDecoder(source, self.resolution, self.device, skip_bad, self.skipped)
            dataset, collate = dd.ReadBytes(source, self.resolution, skip_bad), dd.collate_bytes
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if self.num_workers > 0 else {}
        self._loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
            # its own generator: each iter() draws the workers' base seed from it, not from torch's global
            # one, which a resumed run (one more iter() mid-epoch) would otherwise find moved
            generator=torch.Generator().manual_seed(self.seed),
            **extra,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.order = self._order(self._next_epoch, len(self.source), self._take_start())
        self._next_epoch += 1
        non_blocking = self.device.type == "cuda"
        batches = iter(self._loader)
        if self.decoder is not None:  # bytes from the workers, decoded on the device a batch or two ahead
            batches = self.decoder.ahead(batches)
        while True:
            try:
                images, labels, bad, indices = next(batches)
            except StopIteration:
                return
            except InfoviewError as exc:  # from a worker: its message, without the worker's traceback
                raise InfoviewError(str(exc).strip().splitlines()[-1].split("InfoviewError: ", 1)[-1]) from None
            for i in bad.tolist():
                if i not in self.skipped:
                    self.skipped.add(i)
                    print(f"infoview: skipped unreadable image {self.source.describe(i)} (data.skip_bad=true; "
                          f"{len(self.skipped)} so far)", file=sys.stderr, flush=True)
            if self.decoder is None:
                images = images.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2)
            labels = labels.to(self.device, non_blocking=non_blocking)
            if self.with_indices:
                yield images, labels, indices.to(self.device, non_blocking=non_blocking)
            else:
                yield images, labels


# --------------------------------------------------------------------------- entry point


def build_loader(
    source: str | ImageSource,
    batch_size: int,
    split: str = "train",
    distributed: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    shuffle: bool = True,
    drop_last: bool | None = None,
    backend: str = "auto",
    resolution: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    download: bool = False,
    os_cache: bool = True,
    batches_ahead: int = 3,
    reuse_buffers: bool = False,
    skip_bad: bool = False,
    with_indices: bool = False,
    decode: str = "workers",
    resident_cap: int | None = None,
):
    """A loader of ``(uint8 images (B,3,H,W) on device, int64 labels)``; see the module docstring.

    ``num_workers=None``: all cores for ffcv (threads), up to 8 worker
    processes for PyTorch. ``drop_last=None`` drops the last partial batch when
    shuffling (training) and keeps it otherwise (evaluation). ``rank`` and
    ``world_size`` default to torch.distributed's when ``distributed=True``.
    ``os_cache``, ``batches_ahead`` and ``reuse_buffers`` are ffcv's.
    ``skip_bad`` (PyTorch backend): an unreadable image is replaced by the next
    readable one, named on stderr and counted in ``loader.skipped``; a .beton
    was checked when it was written. ``with_indices``: yield each image's
    index in the source as a third element. ``decode`` (PyTorch backend):
    ``workers`` decode, or ``device``: they read bytes and the batch is decoded
    on ``device`` (``infoview.data.device_decode``). ``resident_cap``
    (resident backend): the most bytes the split may take on the device
    (None: ``infoview.data.resident.default_cap``).
    """
    if backend not in BACKENDS:
        raise InfoviewError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if decode not in DECODES:
        raise InfoviewError(f"decode must be one of {', '.join(DECODES)}, got '{decode}'")
    if decode == "device" and backend in ("ffcv", "resident"):
        raise InfoviewError(f"decode=device is the pytorch backend's (its workers read bytes); backend={backend} "
                            "decodes on its own: use backend=pytorch, or decode=workers")
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) != num_workers
                                    or num_workers < 0):
        raise InfoviewError(f"num_workers must be 0 (load in this process) or a positive count, got {num_workers}")
    src = open_source(source, split=split, download=download)
    if len(src) == 0:
        raise InfoviewError(f"{src.name} has no images")
    rank, world_size = _resolve_ranks(distributed, rank, world_size)
    if drop_last is None:
        drop_last = bool(shuffle)
    common = dict(
        seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size,
        device=device, resolution=resolution, with_indices=with_indices,
    )
    from infoview.data.beton import BetonSource, ffcv_import_error

    if backend == "auto":
        backend = ("ffcv" if isinstance(src, BetonSource) and ffcv_import_error() is None and decode == "workers"
                   else "pytorch")
    if backend == "ffcv":
        from infoview.data.ffcv_loader import FfcvLoader

        return FfcvLoader(
            src, batch_size, num_workers=num_workers or 0, os_cache=os_cache,
            batches_ahead=batches_ahead, reuse_buffers=reuse_buffers, **common,
        )
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    if backend == "resident":
        from infoview.data.resident import ResidentLoader

        return ResidentLoader(src, batch_size, num_workers=num_workers, skip_bad=skip_bad, cap=resident_cap,
                              **common)
    return TorchLoader(src, batch_size, num_workers=num_workers, skip_bad=skip_bad, decode=decode, **common)
