"""Data: source strings, the ffcv .beton writer, and loaders of uint8 batches.

- source strings are ``scheme[:arg...]``, each scheme registered in
  ``registry`` (``register_source``) by one module of ``schemes/``, for the
  kinds of data it gives: images, detection, segmentation;
- ``open_source("folder:/x", split="train")`` -> an indexable ``ImageSource``
  of ``(uint8 HxWx3 image, int label)``;
  ``open_detection_source(...)`` -> a ``DetectionDataset`` (``detection``);
  ``open_segmentation_splits(...)`` -> (train, val) ``SegmentationSource``
  (``segmentation``);
- ``read_image(path)`` (``images``): the one reader of photo files;
- ``ShapesSource`` also gives boxes and instance masks (``.targets(i)``);
- ``write_beton(source, "x.beton")`` (``infoview prepare``) writes an ffcv file;
- ``build_loader(source, batch_size, ...)`` yields ``(images uint8 (B,3,H,W)
  on device, labels int64)`` through ffcv or a PyTorch ``DataLoader``.

Names are imported on first use, so ``infoview prepare --help`` stays quick;
nothing imports ffcv (or numba) until an ffcv path runs.
"""
from __future__ import annotations

from infoview.utils.lazy import lazy_exports

_EXPORTS = {
    "BetonFile": "infoview.data.beton",
    "BetonSource": "infoview.data.beton",
    "ffcv_import_error": "infoview.data.beton",
    "write_beton": "infoview.data.beton",
    "build_loader": "infoview.data.loader",
    "fit_square": "infoview.data.loader",
    "shard_order": "infoview.data.loader",
    "ShapesSource": "infoview.data.shapes",
    "register_source": "infoview.data.registry",
    "read_image": "infoview.data.images",
    "open_detection_source": "infoview.data.detection",
    "open_segmentation_splits": "infoview.data.segmentation",
    "FolderSource": "infoview.data.schemes.folder",
    "CocoSource": "infoview.data.schemes.coco",
    "ArraySource": "infoview.data.sources",
    "ImageSource": "infoview.data.sources",
    "open_source": "infoview.data.sources",
    "check_held_out": "infoview.data.sources",
    "parse_source": "infoview.data.sources",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
