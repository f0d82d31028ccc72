"""The ffcv backend of ``build_loader`` (``infoview.data.loader`` states the contract it keeps)."""
from __future__ import annotations

import os
from typing import Iterator

import torch

from infoview.data.loader import _Base
from infoview.errors import InfoviewError


class FfcvLoader(_Base):
    """ffcv backend over a checked ``.beton``."""

    backend = "ffcv"

    def __init__(
        self, source, batch_size: int, *, num_workers: int, os_cache: bool = True, batches_ahead: int = 3,
        reuse_buffers: bool = False, **kw,
    ):
        from infoview.data.beton import BetonSource, require_ffcv

        if not isinstance(source, BetonSource):
            raise InfoviewError(
                f"the ffcv backend reads .beton files, not {source.name}; write one with "
                f"`infoview prepare {source.name} OUT.beton`, or use backend=pytorch"
            )
        require_ffcv("backend=ffcv")
        super().__init__(source, batch_size, **kw)
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

        r = self.resolution
        if source.file.image_size == (r, r):
            decoder = SimpleRGBImageDecoder()
        else:
            decoder = CenterCropRGBImageDecoder((r, r), ratio=1.0)
        image_pipe, label_pipe = [decoder, ToTensor()], [IntDecoder(), ToTensor()]
        if self.device.type != "cpu":
            image_pipe.append(ToDevice(self.device, non_blocking=True))
            label_pipe.append(ToDevice(self.device, non_blocking=True))
        image_pipe.append(ToTorchImage(channels_last=True))
        names = source.file.field_names
        pipelines = {names[source.file.image_field]: image_pipe}
        if source.file.label_field is not None:
            pipelines[names[source.file.label_field]] = label_pipe
        for i, name in enumerate(names):
            pipelines.setdefault(name, None)  # other fields: not decoded
        self.num_workers = int(num_workers) if num_workers else (os.cpu_count() or 1)
        threads = torch.get_num_threads()
        self._loader = Loader(
            str(source.path),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            os_cache=os_cache,
            order=OrderOption.SEQUENTIAL,
            distributed=False,
            seed=self.seed,
            pipelines=pipelines,
            drop_last=self.drop_last,
            batches_ahead=batches_ahead,
        )
        torch.set_num_threads(threads)  # ffcv's Loader sets it to num_workers
        # ffcv's own distributed order needs torch.distributed initialised; ours
        # takes rank and world size as given and matches the PyTorch backend.
        self._order_start = 0
        self._loader.traversal_order = _make_ffcv_order(self._loader, self)
        self._loader.first_traversal_order = self._loader.next_traversal_order()
        self._has_labels = source.file.label_field is not None
        self.reuse_buffers = bool(reuse_buffers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._loader.next_epoch = self._next_epoch
        self._order_start = self._take_start()
        # ffcv reads this order batch by batch (OrderOption.SEQUENTIAL over our traversal order), so the
        # images' indices are its consecutive slices: no index field is stored in the .beton
        order = torch.from_numpy(self._order(self._next_epoch, len(self.source), self._order_start))
        self._next_epoch += 1
        threads = torch.get_num_threads()
        it = iter(self._loader)
        torch.set_num_threads(threads)  # ffcv sets torch's thread count to its own; put it back
        try:
            for b, batch in enumerate(it):
                images = batch[0] if self.reuse_buffers else _copy(batch[0])
                if self._has_labels:
                    labels = _copy(batch[1].reshape(-1))  # ffcv's buffer is reused
                else:
                    labels = torch.full((images.shape[0],), -1, dtype=torch.int64, device=images.device)
                if self.with_indices:
                    start = b * self.batch_size
                    yield images, labels, order[start : start + images.shape[0]].to(images.device)
                else:
                    yield images, labels
        finally:
            it.close()


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A copy with the same layout. On CPU through numpy: one single-threaded
    memcpy, where torch's threaded copy can wait milliseconds for a busy core."""
    if t.device.type != "cpu":
        return t.clone()
    return torch.from_numpy(t.numpy().copy(order="K"))


def _make_ffcv_order(ffcv_loader, ours: _Base):
    from ffcv.traversal_order.base import TraversalOrder

    class ShardOrder(TraversalOrder):
        def sample_order(self, epoch: int):
            return self.indices[ours._order(epoch, len(self.indices), ours._order_start)]

    return ShardOrder(ffcv_loader)
