"""``decode="device"``: loader workers read bytes; the batch's JPEGs are decoded on the training device.

Why: for photos, decoding is most of a loader's work (a PyTorch loader on 8
workers fed a ResNet-50 at 224 px 0.41 of its own speed on an H200,
docs/gpu/h200_2026-11-30.md). Here a worker only reads a file's bytes, and
the main process decodes the whole batch in one call of
``torchvision.io.decode_jpeg(list, device=...)``: nvJPEG on a GPU, libjpeg
on a CPU (the same path, which is how it is tested here; torchvision 0.29 marks its image
codecs deprecated in favour of TorchCodec, and constraints.txt pins it). Each image is then
centre-cropped to a square and resized to the loader's resolution on the
device, images of one size in one ``interpolate`` call.

Same contract as the workers' decoding (``infoview.data.loader``): the same
order, labels and image indices for a seed, epoch, rank and resume position.
Pixels may differ by a level or two: the resize is torch's antialiased
bilinear (``F.interpolate(..., antialias=True)``, made to follow Pillow's)
instead of Pillow's own.

What nvJPEG cannot do goes to the CPU, named once on stderr and counted in
``loader.cpu_decoded``:

- a file that is not a JPEG (PNG, WebP, ...; told by its first bytes) is
  decoded in the worker with ``read_image``, as ``decode="workers"`` does;
- a JPEG the device's decoder refuses (CMYK, arithmetic coding, damage) is
  decoded with ``read_image`` in the main process; one that no decoder reads
  is an error naming it, or with ``skip_bad`` replaced by the next readable
  image, which carries its own index.

The decoding runs in a thread one or two batches ahead of the training step
(:meth:`DeviceDecoder.ahead`; on a GPU on a stream of its own, which the
step's stream waits for), so that nvJPEG's host-side work and the copies
overlap the step instead of adding to it.

A source must have encoded files to read (``ImageSource.read_bytes``):
folders, COCO, .beton files written with JPEGs. Arrays (digits, shapes,
torchvision's CIFAR files) have nothing to decode, which is an error that
names ``data.backend=resident`` instead.
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from infoview.data.images import read_image
from infoview.data.loader import _DecodeOnce, fit_square
from infoview.data.sources import ImageSource
from infoview.errors import InfoviewError

JPEG_MAGIC = b"\xff\xd8\xff"
#: kinds of a worker's payload
KIND_JPEG, KIND_ARRAY = 0, 1


def has_encoded_files(source: ImageSource) -> bool:
    return type(source).read_bytes is not ImageSource.read_bytes


def check_source(source: ImageSource) -> None:
    if not has_encoded_files(source):
        raise InfoviewError(
            f"data.decode=device reads encoded image files, and {source.name} holds decoded arrays (nothing to "
            "decode); use data.decode=workers, or data.backend=resident to hold a small split on the device"
        )


class ReadBytes(_DecodeOnce):
    """A worker's share: a JPEG's bytes, or (for another format) the image decoded and fitted here.

    Returns ``(payload, kind, label, bad, index)``: ``bad`` and ``index`` as
    ``_DecodeOnce`` gives them, with the same replacement of unreadable files.
    """

    def read(self, index: int) -> tuple:
        data, label = self.source.read_bytes(index)
        if data is not None and data[:3] == JPEG_MAGIC:
            return np.frombuffer(data, dtype=np.uint8), KIND_JPEG, label
        # not a JPEG (or a .beton's raw pixels, data None): the CPU reader, here in the worker
        image = self.source.load(index)[0] if data is None else read_image(data, name=self.source.describe(index))
        return fit_square(image, self.resolution), KIND_ARRAY, label


def collate_bytes(batch):
    payloads = [torch.from_numpy(np.array(b[0])) for b in batch]  # a copy: the workers' buffers are read-only
    kinds = [b[1] for b in batch]
    labels = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    bad = torch.tensor([b[3] for b in batch if b[3] >= 0], dtype=torch.int64)
    indices = torch.tensor([b[4] for b in batch], dtype=torch.int64)
    return payloads, kinds, labels, bad, indices


def centre_square(image: torch.Tensor) -> torch.Tensor:
    """(3, h, w) -> its centred square crop (3, s, s), s = min(h, w): what ``fit_square`` crops."""
    _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[:, top : top + s, left : left + s]


def resize_squares(squares: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, s, s) uint8 -> (n, 3, size, size) uint8: antialiased bilinear, rounded."""
    if squares.shape[-1] == size:
        return squares
    x = F.interpolate(squares.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _positions(members: list[int], device: torch.device) -> torch.Tensor:
    """Batch positions as a tensor on ``device``, without the stream synchronisation of torch.tensor(device=cuda)."""
    return torch.tensor(members, dtype=torch.int64).to(device, non_blocking=True)


class DeviceDecoder:
    """Turns a worker batch into uint8 images (B, 3, r, r) (channels-last memory) on ``device``."""

    def __init__(self, source: ImageSource, resolution: int, device: torch.device, skip_bad: bool,
                 skipped: set[int]):
        self.source, self.resolution, self.device, self.skip_bad = source, resolution, device, skip_bad
        self.cpu_decoded: set[int] = set()  # indices nvJPEG could not read, decoded on the CPU instead
        self.skipped = skipped  # the loader's: unreadable images replaced (with skip_bad), here or in a worker

    def _note_cpu(self, index: int, why: str) -> None:
        if index not in self.cpu_decoded:
            self.cpu_decoded.add(index)
            print(f"infoview: decoded {self.source.describe(index)} on the CPU ({why}; data.decode=device; "
                  f"{len(self.cpu_decoded)} so far)", file=sys.stderr, flush=True)

    def _decode_jpegs(self, payloads: list[torch.Tensor], where: list[int], indices: list[int]):
        """{position in batch: (3, h, w) on the device}; what the device decoder refuses goes to the CPU."""
        from torchvision.io import ImageReadMode, decode_jpeg

        datas = [payloads[i] for i in where]
        try:
            return dict(zip(where, decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)))
        except (RuntimeError, ValueError):  # one bad file fails the batched call: decode one by one to find it
            pass
        out = {}
        for i, data in zip(where, datas):
            try:
                out[i] = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except (RuntimeError, ValueError) as exc:
                out[i] = self._cpu_fallback(data, indices[i], exc)
        return out

    def _cpu_fallback(self, data: torch.Tensor, index: int, exc: Exception) -> torch.Tensor | None:
        """The image the CPU's reader makes of a JPEG nvJPEG refused; None (skip_bad) when it cannot either."""
        try:
            image = read_image(data.numpy().tobytes(), name=self.source.describe(index))
        except InfoviewError as err:
            if not self.skip_bad:
                raise InfoviewError(f"{err}; pass data.skip_bad=true to skip unreadable images") from None
            return None
        self._note_cpu(index, f"the device's JPEG decoder refused it: {str(exc).splitlines()[0][:80]}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(self.device)

    def __call__(self, payloads, kinds, labels: torch.Tensor, indices: torch.Tensor):
        r, dev = self.resolution, self.device
        b = len(payloads)
        out = torch.empty((b, r, r, 3), dtype=torch.uint8, device=dev)
        index_list = indices.tolist()
        jpegs = [i for i, k in enumerate(kinds) if k == KIND_JPEG]
        decoded = self._decode_jpegs(payloads, jpegs, index_list) if jpegs else {}
        groups: dict[int, list[int]] = defaultdict(list)
        squares: dict[int, torch.Tensor] = {}
        for i, image in decoded.items():
            if image is None:  # unreadable by any decoder, skip_bad: the next readable one
                image, labels[i], indices[i] = self._replacement(index_list[i])
                out[i].copy_(torch.from_numpy(np.array(image)).to(dev))
                continue
            squares[i] = centre_square(image)
            groups[squares[i].shape[-1]].append(i)
        for members in groups.values():
            batch = resize_squares(torch.stack([squares[i] for i in members]), r)
            out.index_copy_(0, _positions(members, dev), batch.permute(0, 2, 3, 1))
        arrays = [i for i, k in enumerate(kinds) if k == KIND_ARRAY]
        if arrays:
            for i in arrays:
                self._note_cpu(index_list[i], "not a JPEG")
            host = torch.stack([payloads[i] for i in arrays])
            out.index_copy_(0, _positions(arrays, dev), host.to(dev, non_blocking=True))
        return out.permute(0, 3, 1, 2), labels, indices

    def ahead(self, batches, depth: int = 2):
        """Worker batches decoded ``depth`` ahead in a thread: yields ``(images, labels, bad, indices)``.

        Stopping early (the caller breaks, or raises) stops the thread before this returns, so the
        DataLoader's persistent iterator is free for the next epoch.
        """
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=depth)
        stop, end = threading.Event(), object()

        def put(item) -> None:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                for payloads, kinds, labels, bad, indices in batches:
                    if stop.is_set():
                        return
                    with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                        images, labels, indices = self(payloads, kinds, labels, indices)
                        done = torch.cuda.Event() if cuda else None
                        if cuda:
                            done.record(stream)
                    put((images, labels, bad, indices, done))
                put(end)
            except BaseException as exc:  # the worker's error, raised where the batch was wanted
                put(exc)

        thread = threading.Thread(target=work, name="infoview-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, labels, bad, indices, done = item
                if cuda:  # the step's stream waits for the decoding, and the allocator knows who reads the batch
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(done)
                    images.record_stream(current)
                yield images, labels, bad, indices
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    ready.get_nowait()
            thread.join()

    def _replacement(self, index: int) -> tuple[np.ndarray, int, int]:
        """The next readable image after ``index``, fitted on the CPU: (image, label, its index)."""
        n = len(self.source)
        image, label, _, read = _DecodeOnce(self.source, self.resolution, skip_bad=True)[(index + 1) % n]
        if index not in self.skipped:
            self.skipped.add(index)
            print(f"infoview: skipped unreadable image {self.source.describe(index)} (data.skip_bad=true; "
                  f"{len(self.skipped)} so far)", file=sys.stderr, flush=True)
        return image, label, read
