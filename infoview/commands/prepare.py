"""Write an image source to an ffcv .beton file: `infoview prepare SRC OUT.beton`.

SRC is a source string: digits, shapes, cifar10:<root>, cifar100:<root>,
stl10:<root>, folder:<path> (one subfolder per class; train/ and test/ inside
are picked by split=), coco:<images>:<instances.json>, beton:<file>.

The file is written under a temp name beside OUT and renamed when complete,
and an existing OUT is kept unless overwrite=true. Beside it goes OUT.json,
the record of its source, split and class names: a .beton holds one split,
and reading it as another split is an error, so write each split to its own
file (the held-out one is then data.test_source= for linear/knn and
data.eval_source= for pretraining). Images are stored raw
(exact), as JPEG (jpg, smaller), or smart: raw up to 96x96, JPEG above;
max_resolution caps the longer side (0 keeps every size). An unreadable image
is an error naming the file, or, with skip_bad=true, is left out and counted.
Prints a JSON summary: images written, skipped, bytes, seconds.

Examples:
  infoview prepare folder:data/cifar10_jpeg c10_train.beton split=train
  infoview prepare cifar10:~/data c10_test.beton split=test write_mode=jpg jpeg_quality=95
"""
from __future__ import annotations

from infoview.commands import Command
from infoview.data.choices import WRITE_MODES
from infoview.schema import Key

DEFAULTS = {
    "src": Key("", "SRC: the source to write (see above; `infoview list sources`)"),
    "out": Key("", "OUT: the .beton file to write; OUT.json goes beside it"),
    "split": Key("train", "the split of SRC to write (a .beton holds one)"),
    "max_resolution": Key(512, "cap on an image's longer side in px; 0 keeps every size", min=0),
    "jpeg_quality": Key(90, "JPEG quality of the images stored as JPEG", min=1, max=100),
    "write_mode": Key("smart", "raw (exact), jpg (smaller) or smart (raw up to 96x96, JPEG above)",
                      choices=WRITE_MODES),
    "overwrite": Key(False, "replace an existing OUT"),
    "skip_bad": Key(False, "leave out (and count) an unreadable image instead of stopping"),
    "num_workers": Key(0, "ffcv writer workers; 0 = one per core, up to 16", min=0),
    "download": Key(False, "cifar10:, cifar100:, stl10: download into their root when it is missing"),
}
COMMAND = Command(help="Write an image source (digits, folder:..., cifar10:...) to an ffcv .beton file.", positional=("src", "out"))


def run(cfg) -> dict:
    from pathlib import Path

    from infoview.errors import InfoviewError

    if Path(cfg.out).expanduser().exists() and not cfg.overwrite:  # before any slow reading
        raise InfoviewError(f"{cfg.out} exists; pass overwrite=true to replace it")

    from infoview.data.beton import write_beton
    from infoview.data.sources import open_source

    source = open_source(cfg.src, split=cfg.split, download=cfg.download)
    return write_beton(
        source,
        cfg.out,
        max_resolution=cfg.max_resolution,
        jpeg_quality=cfg.jpeg_quality,
        write_mode=cfg.write_mode,
        overwrite=cfg.overwrite,
        skip_bad=cfg.skip_bad,
        num_workers=cfg.num_workers,
    )
