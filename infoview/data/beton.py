"""ffcv ``.beton`` files: a checked reader (no ffcv needed) and the writer.

The reader parses the file layout that ffcv 1.0 writes (format version 2)::

    header (24 B) | field descriptors | per-sample metadata | data pages | allocation table

and checks it before anything reads from it, so that a truncated or foreign
file is an error naming the file instead of a crash deep inside compiled
code. ``BetonSource`` reads samples one by one (the PyTorch backend uses it);
the ffcv backend uses ffcv's own reader after the same checks.

``write_beton`` writes a source with ffcv's ``DatasetWriter`` (an
``RGBImageField`` named ``image`` and an ``IntField`` named ``label``) to a
temp name beside the target, then renames it: a partial file is never left.
Beside it goes ``<file>.json``: the source, its split and its class names.
A .beton holds one split: ``BetonSource`` refuses to serve another split than
the one its record names, so a held-out split is its own file.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from infoview.data.choices import WRITE_MODES
from infoview.data.images import read_image
from infoview.data.sources import ImageSource
from infoview.errors import InfoviewError
from infoview.utils.io import atomic_path, atomic_write_text

FORMAT_VERSION = 2
HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC_ENTRY = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
FLOAT_TYPE, INT_TYPE, RGB_TYPE = 0, 1, 2
RGB_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
FIELD_META = {FLOAT_TYPE: np.dtype("<f8"), INT_TYPE: np.dtype("<i8"), RGB_TYPE: RGB_META}
MODE_JPG, MODE_RAW = 0, 1
#: in ``smart`` mode, images up to this many raw bytes (96x96 RGB) are stored raw, larger ones as JPEG
SMART_THRESHOLD = 3 * 96 * 96
MIN_PAGE_SIZE = 1 << 21


def _truncated(path, what: str) -> InfoviewError:
    return InfoviewError(
        f"{path} is truncated or not an ffcv .beton file ({what}); write it again with `infoview prepare`"
    )


class BetonFile:
    """A checked view of a .beton: header, fields, metadata and allocation table."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise InfoviewError(f"beton file {self.path} does not exist; write one with `infoview prepare SRC OUT.beton`")
        if not self.path.is_file():
            raise InfoviewError(f"beton file {self.path} is not a file")
        size = self.path.stat().st_size
        self.file_size = size
        if size < HEADER.itemsize:
            raise _truncated(self.path, f"{size} bytes, shorter than the header")
        header = np.fromfile(self.path, dtype=HEADER, count=1)[0]
        if int(header["version"]) != FORMAT_VERSION:
            raise InfoviewError(
                f"{self.path} is not an ffcv .beton file of format version {FORMAT_VERSION} "
                f"(found version {int(header['version'])})"
            )
        self.num_samples = int(header["num_samples"])
        self.page_size = int(header["page_size"])
        num_fields = int(header["num_fields"])
        alloc_ptr = int(header["alloc_table_ptr"])
        if alloc_ptr == 0:
            raise _truncated(self.path, "its writer did not finish: no allocation table")
        if not 0 < num_fields <= 64:
            raise _truncated(self.path, f"implausible field count {num_fields}")
        desc_end = HEADER.itemsize + num_fields * FIELD_DESC.itemsize
        if size < desc_end:
            raise _truncated(self.path, "field descriptors cut short")
        desc = np.fromfile(self.path, dtype=FIELD_DESC, count=num_fields, offset=HEADER.itemsize)
        self.field_names = [bytes(d["name"]).rstrip(b"\0").decode("ascii", "replace") for d in desc]
        self.field_types = [int(d["type_id"]) for d in desc]
        unsupported = [n for n, t in zip(self.field_names, self.field_types) if t not in FIELD_META]
        if unsupported or RGB_TYPE not in self.field_types:
            raise InfoviewError(
                f"{self.path}: infoview reads .beton files with an RGB image field and an int label "
                f"field; this one has fields {self.field_names} (type ids {self.field_types})"
            )
        self.meta_type = np.dtype([("", FIELD_META[t]) for t in self.field_types], align=True)
        meta_end = desc_end + self.num_samples * self.meta_type.itemsize
        if size < meta_end:
            raise _truncated(self.path, "metadata cut short")
        self.metadata = np.fromfile(self.path, dtype=self.meta_type, count=self.num_samples, offset=desc_end)
        if alloc_ptr > size or (size - alloc_ptr) % ALLOC_ENTRY.itemsize:
            raise _truncated(self.path, f"allocation table at byte {alloc_ptr} of {size} is cut short")
        table = np.fromfile(self.path, dtype=ALLOC_ENTRY, offset=alloc_ptr)
        order = np.argsort(table["ptr"], kind="stable")
        self.ptrs = np.ascontiguousarray(table["ptr"][order])
        self.sizes = np.ascontiguousarray(table["size"][order])
        if len(table) and int((table["ptr"] + table["size"]).max()) > alloc_ptr:
            raise _truncated(self.path, "a sample points past the data region")
        self.image_field = self.field_types.index(RGB_TYPE)
        self.label_field = self.field_types.index(INT_TYPE) if INT_TYPE in self.field_types else None
        images = self.metadata[self.metadata.dtype.names[self.image_field]]
        self.image_meta = images
        if self.num_samples:
            data_ptrs = images["data_ptr"]
            pos = np.searchsorted(self.ptrs, data_ptrs)
            ok = (pos < len(self.ptrs)) & (self.ptrs[np.minimum(pos, len(self.ptrs) - 1)] == data_ptrs)
            if not ok.all():
                raise _truncated(self.path, f"{int((~ok).sum())} image(s) missing from the allocation table")
            bad_mode = ~np.isin(images["mode"], (MODE_JPG, MODE_RAW))
            if bad_mode.any():
                raise _truncated(self.path, "unknown image storage mode")

    @property
    def labels(self) -> np.ndarray:
        if self.label_field is None:
            return np.full(self.num_samples, -1, dtype=np.int64)
        return np.asarray(self.metadata[self.metadata.dtype.names[self.label_field]], dtype=np.int64)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) when every image in the file has it, else None."""
        h, w = self.image_meta["height"], self.image_meta["width"]
        if self.num_samples and h.min() == h.max() and w.min() == w.max():
            return int(h[0]), int(w[0])
        return None


def meta_path(beton: str | os.PathLike) -> Path:
    """The record ``infoview prepare`` writes beside a .beton: ``<file>.json``."""
    p = Path(beton).expanduser()
    return p.with_name(p.name + ".json")


class BetonSource(ImageSource):
    """Reads a .beton sample by sample (raw copies or JPEG decodes); no ffcv needed.

    A .beton holds one split. Where its record (``<file>.json``) names that
    split, asking for another one is an error; a file without a record (made
    elsewhere) has ``split = None`` and the commands refuse to take training
    and held-out data from the same file.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        self.file = BetonFile(path)
        self.path = self.file.path
        self.name = f"beton:{path}"
        self.image_size = self.file.image_size
        self._labels = self.file.labels
        self._mmap = None
        self._pid = None
        record = _read_meta(self.path)
        self.split = record.get("split")
        self.classes = record.get("classes")
        if split is not None and self.split is not None and split != self.split:
            raise InfoviewError(
                f"{self.name} holds the '{self.split}' split of {record.get('source', 'its source')}, not '{split}'; "
                f"a .beton is one split: write the '{split}' split to its own file (infoview prepare ... split={split}) "
                "and name it as the held-out data"
            )

    def __len__(self) -> int:
        return self.file.num_samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mmap"] = None  # reopened in each process
        return state

    def _data(self) -> np.ndarray:
        if self._mmap is None or self._pid != os.getpid():
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
            self._pid = os.getpid()
        return self._mmap

    def _sample(self, index: int):
        meta = self.file.image_meta[index]
        ptr = int(meta["data_ptr"])
        size = int(self.file.sizes[np.searchsorted(self.file.ptrs, ptr)])
        return meta, self._data()[ptr : ptr + size]

    def read_bytes(self, index: int) -> tuple[bytes | None, int]:
        """A JPEG sample's bytes; None for one stored as raw pixels (``load`` copies those)."""
        meta, raw = self._sample(index)
        return (None if int(meta["mode"]) == MODE_RAW else raw.tobytes()), int(self._labels[index])

    def load(self, index: int) -> tuple[np.ndarray, int]:
        meta, raw = self._sample(index)
        h, w = int(meta["height"]), int(meta["width"])
        if int(meta["mode"]) == MODE_RAW:
            image = np.array(raw[: h * w * 3]).reshape(h, w, 3)
        else:
            image = read_image(raw.tobytes(), name=f"{self.path}: sample {index}")
        return image, int(self._labels[index])

    def describe(self, index: int) -> str:
        return f"{self.path}[{index}]"

    def labels(self) -> np.ndarray:
        return self._labels.copy()


def _read_meta(path: Path) -> dict:
    import json

    meta = meta_path(path)
    if not meta.is_file():
        return {}
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InfoviewError(f"{meta}: not a readable .beton record ({exc}); remove it or write the .beton again") from None
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------- writing


_FFCV_STATUS: list = []


def ffcv_import_error() -> str | None:
    """None when ffcv imports, else a one-line reason with the install hint (cached)."""
    if not _FFCV_STATUS:
        import torch

        threads = torch.get_num_threads()
        try:
            import ffcv  # noqa: F401
            from ffcv.loader import Loader  # noqa: F401
            from ffcv.writer import DatasetWriter  # noqa: F401

            _FFCV_STATUS.append(None)
        except Exception as exc:  # ImportError, or numba/numpy mismatches at import
            _FFCV_STATUS.append(
                f"ffcv is not usable ({type(exc).__name__}: {exc}); install it with "
                "`pip install -e '.[ffcv]'` (needs libturbojpeg0-dev libopencv-dev pkg-config)"
            )
        finally:
            torch.set_num_threads(threads)  # importing ffcv sets torch's thread count to 1
    return _FFCV_STATUS[0]


def require_ffcv(what: str) -> None:
    err = ffcv_import_error()
    if err:
        raise InfoviewError(f"{what} needs ffcv: {err}")


def _target_shape(h: int, w: int, max_resolution: int) -> tuple[int, int]:
    """The size ffcv's RGBImageField stores: longer side capped at max_resolution."""
    if max_resolution and max(h, w) > max_resolution:
        ratio = max_resolution / max(h, w)
        return int(ratio * h), int(ratio * w)
    return h, w


def _page_size(max_resolution: int) -> int:
    need = 3 * max_resolution * max_resolution + 4096 if max_resolution else 1 << 26
    return max(MIN_PAGE_SIZE, 1 << math.ceil(math.log2(need)))


BAD_UNREADABLE, BAD_TOO_LARGE = 1, 2


class _WriterDataset:
    """Wraps a source for ffcv's writer processes.

    An exception inside ffcv's writer processes would hang the writer (it waits
    for a count that never comes), so no exception leaves ``__getitem__``: a
    bad image is flagged in shared memory and a 1x1 placeholder is written;
    the parent then fails (naming the file) or rewrites without it. Once a bad
    image is flagged and bad images are not skipped, the rest is not decoded.
    """

    def __init__(self, source: ImageSource, max_resolution: int, page_size: int, skip_bad: bool):
        self.source = source
        self.max_resolution = max_resolution
        self.page_size = page_size
        self.skip_bad = skip_bad
        self.flags = mp.RawArray("b", len(source))
        self.abort = mp.RawValue("b", 0)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        placeholder = (np.zeros((1, 1, 3), np.uint8), -1)
        if self.abort.value:
            return placeholder
        try:
            image, label = self.source.load(int(index))
            image = np.ascontiguousarray(image, dtype=np.uint8)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image of shape {image.shape}, expected (H, W, 3)")
            h, w = _target_shape(image.shape[0], image.shape[1], self.max_resolution)
            if 3 * h * w > self.page_size:
                self.flags[index] = BAD_TOO_LARGE
            else:
                return image, int(label)
        except Exception:
            self.flags[index] = BAD_UNREADABLE
        if not self.skip_bad:
            self.abort.value = 1
        return placeholder


def _bad_message(source: ImageSource, index: int, code: int, max_resolution: int) -> str:
    if code == BAD_TOO_LARGE:
        return f"{source.describe(index)} is too large to store; set max_resolution (now {max_resolution or 'unlimited'})"
    try:
        source.load(index)
    except Exception as exc:
        return str(exc) if isinstance(exc, InfoviewError) else f"cannot read {source.describe(index)}: {exc}"
    return f"cannot read {source.describe(index)} (it failed in a writer process)"


def _check_write(source: ImageSource, out, max_resolution, jpeg_quality, write_mode: str, overwrite: bool) -> Path:
    """The cheap checks before a .beton is written: the settings, the output path, an empty source."""
    if write_mode not in WRITE_MODES:
        raise InfoviewError(f"write_mode must be one of {', '.join(WRITE_MODES)}, got '{write_mode}'")
    if not 1 <= int(jpeg_quality) <= 100:
        raise InfoviewError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if int(max_resolution) < 0:
        raise InfoviewError(f"max_resolution must be >= 0 (0 = keep every image's size), got {max_resolution}")
    out = Path(out).expanduser()
    if out.is_dir():
        raise InfoviewError(f"output {out} is a folder; give a file name such as {out / 'train.beton'}")
    if out.exists() and not overwrite:
        raise InfoviewError(f"{out} exists; pass overwrite=true to replace it")
    if len(source) == 0:
        raise InfoviewError(f"{source.name} has no images to write")
    return out


def _drop_unreadable(source, dataset, indices, skip_bad: bool, attempt: int, max_resolution: int,
                     skipped: list[str]) -> tuple[np.ndarray, list[str], bool]:
    """After one writing pass: ``(indices, skipped, done)``; unreadable images are an error unless skip_bad."""
    flags = np.frombuffer(dataset.flags, dtype=np.int8)
    bad = np.nonzero(flags[indices])[0]
    if not len(bad):
        return indices, skipped, True
    first = int(indices[bad[0]])
    if not skip_bad or attempt == 1:
        raise InfoviewError(
            _bad_message(source, first, int(flags[first]), max_resolution)
            + ("" if skip_bad else "; pass skip_bad=true to skip unreadable images")
        )
    skipped = [source.describe(int(i)) for i in indices[bad]]
    indices = np.delete(indices, bad)
    if not len(indices):
        raise InfoviewError(f"no readable images in {source.name} ({len(skipped)} unreadable)")
    return indices, skipped, False


def write_beton(
    source: ImageSource,
    out: str | os.PathLike,
    *,
    max_resolution: int = 512,
    jpeg_quality: int = 90,
    write_mode: str = "smart",
    overwrite: bool = False,
    skip_bad: bool = False,
    num_workers: int = 0,
) -> dict:
    """Write ``source`` to ``out`` as an ffcv .beton; returns a summary dict."""
    out = _check_write(source, out, max_resolution, jpeg_quality, write_mode, overwrite)
    require_ffcv("infoview prepare")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    workers = int(num_workers) if num_workers and num_workers > 0 else min(os.cpu_count() or 1, 16)
    page_size = _page_size(int(max_resolution))
    dataset = _WriterDataset(source, int(max_resolution), page_size, skip_bad)
    fields = {
        "image": RGBImageField(
            write_mode=write_mode,
            max_resolution=int(max_resolution) or None,
            jpeg_quality=int(jpeg_quality),
            smart_threshold=SMART_THRESHOLD,
        ),
        "label": IntField(),
    }
    start = time.perf_counter()
    indices = np.arange(len(source))
    skipped: list[str] = []
    with atomic_path(out) as tmp:
        for attempt in range(2):  # a second pass without the images the first could not read (skip_bad)
            writer = DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=workers)
            writer.from_indexed_dataset(dataset, indices=indices, chunksize=max(1, min(100, len(indices) // workers or 1)))
            indices, skipped, done = _drop_unreadable(source, dataset, indices, skip_bad, attempt, int(max_resolution),
                                                      skipped)
            if done:
                break
        num_bytes = tmp.stat().st_size
    atomic_write_text(meta_path(out), json.dumps({
        "format": "infoview-beton-record-1", "source": source.name, "split": source.split,
        "classes": list(source.classes) if source.classes else None, "images": int(len(indices)),
    }, indent=2) + "\n")
    return {
        "out": str(out),
        "source": source.name,
        "split": source.split,
        "images": int(len(indices)),
        "skipped": len(skipped),
        "skipped_files": skipped[:20],
        "bytes": int(num_bytes),
        "seconds": round(time.perf_counter() - start, 2),
        "write_mode": write_mode,
        "max_resolution": int(max_resolution),
    }
