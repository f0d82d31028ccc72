"""Reading image files: ``read_image`` for photos, ``image_size`` from the header, ``load_mask_file`` for label maps.

Every source and dataset that decodes a photo does it with :func:`read_image`,
so that a file reads the same whichever command reads it:

- the result is RGB ``uint8`` (H, W, 3): grayscale is repeated over the three
  channels, palette images are looked up, and an alpha channel (RGBA, LA, PA,
  palette transparency) is dropped, the colours kept as they are;
- 16-bit images (Pillow's modes ``I;16``, ``I;16B``, ``I;16L``, and ``I``, in
  which older Pillow versions open 16-bit PNGs) are scaled from 0..65535 to
  0..255: value * 255 / 65535, rounded (values above 65535 read as 255). A
  16-bit PNG reads as the 8-bit image it shows, not clipped to white;
- floating-point images (mode ``F``) are refused: their range is unknown;
- a missing file, or one that does not decode, is an :class:`InfoviewError`
  naming the file.

Masks are label maps, not photos: :func:`load_mask_file` reads their class ids
as they are.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from infoview.errors import InfoviewError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: Pillow modes read as 16-bit values (older Pillow versions open 16-bit PNGs as ``I``)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension (and is not hidden)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def read_image(file: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file (a path, or its bytes) to RGB uint8 (H, W, 3); see the module docstring.

    ``name`` is how errors name the image (default: the path).
    """
    what = name or (f"<{len(file)} bytes>" if isinstance(file, bytes) else str(file))
    try:
        with Image.open(io.BytesIO(file) if isinstance(file, bytes) else file) as im:
            arr = _to_rgb(im, what)
    except InfoviewError:
        raise
    except FileNotFoundError:
        raise InfoviewError(f"image file {what} does not exist") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise InfoviewError(f"cannot read image {what}: {type(exc).__name__}: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InfoviewError(f"cannot read image {what}: decoded to shape {arr.shape}")
    return arr


def _to_rgb(im: Image.Image, what: str) -> np.ndarray:
    if im.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if im.mode == "F":
        raise InfoviewError(
            f"cannot read image {what}: it holds floating-point pixels (mode F), whose range is unknown; "
            "save it as 8- or 16-bit"
        )
    if im.mode in ("LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")  # Pillow's own advice for palette transparency; the alpha is dropped next
    return np.array(im.convert("RGB"), dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise InfoviewError(f"image file {path} does not exist") from None
    except Exception as exc:  # PIL raises many types
        raise InfoviewError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return int(h), int(w)


def load_mask_file(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-channel mask of class ids to int64 (H, W); errors name the file."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise InfoviewError(
                    f"mask {path} has mode {im.mode}; expected a single-channel image of class ids "
                    "(mode L, P, I or I;16)"
                )
            arr = np.asarray(im)
    except InfoviewError:
        raise
    except FileNotFoundError:
        raise InfoviewError(f"mask file {path} does not exist") from None
    except Exception as exc:  # PIL raises many types
        raise InfoviewError(f"cannot read mask {path}: {type(exc).__name__}: {exc}") from None
    if arr.ndim != 2:
        raise InfoviewError(f"mask {path} decoded to shape {arr.shape}; expected (H, W) class ids")
    return arr.astype(np.int64)
