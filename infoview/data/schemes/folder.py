"""``folder:<path>``: an ImageFolder tree, one subfolder per class; ``train/``, ``test/``, ``val/`` inside pick the split."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from infoview.data.images import IMAGE_EXTENSIONS, is_image_file
from infoview.data.registry import register_source
from infoview.data.sources import FileListSource
from infoview.errors import InfoviewError


class FolderSource(FileListSource):
    """ImageFolder layout: ``<root>/<class>/**/<image>``; classes sorted by name.

    When the folder holds ``train/``, ``test/`` or ``val/`` subfolders (and only
    those), ``split`` picks one; otherwise the folder is the data, and asking
    for a ``test`` or ``val`` split is an error rather than a silent reuse.
    """

    SPLITS = ("train", "test", "val")

    def __init__(self, path: str, split: str = "train"):
        self.name = f"folder:{path}"
        root = Path(path).expanduser()
        if not path:
            raise InfoviewError("folder: give a path, as folder:<path>")
        if not root.exists():
            raise InfoviewError(f"folder {root} does not exist")
        if not root.is_dir():
            raise InfoviewError(f"folder:{path}: {root} is a file, expected a folder with one subfolder per class")
        subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        split_dirs = [d for d in subdirs if d in self.SPLITS]
        if split_dirs and len(split_dirs) == len(subdirs):
            if split not in split_dirs:
                raise InfoviewError(
                    f"folder {root} has no '{split}' split; it has: {', '.join(split_dirs)}"
                )
            root = root / split
            subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        elif split not in (None, "train"):
            raise InfoviewError(
                f"folder {root} has no train/test/val subfolders, so it has no '{split}' split; "
                "it is all one split (split=train)"
            )
        else:
            split = None  # one split: the folder itself
        self.root, self.split = root, split
        if not subdirs:
            loose = [f.name for f in root.iterdir() if f.is_file() and is_image_file(f.name)]
            if loose:
                raise InfoviewError(
                    f"folder {root} holds images directly ({loose[0]}, ...); expected one subfolder "
                    "per class (<root>/<class>/<image>)"
                )
            raise InfoviewError(f"folder {root} is empty: expected one subfolder per class with images in it")
        files: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(subdirs):
            found = []
            for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
            if not found:
                raise InfoviewError(
                    f"class folder {root / cls} has no images (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
                )
            files += found
            labels += [label] * len(found)
        self.files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        self.classes = subdirs


@register_source("folder", kind="images", usage="folder:<path>",
                 help="one subfolder per class (<path>/<class>/**/<image>); train/, test/, val/ inside pick the split",
                 looks_like=os.path.isdir)
def open_folder(path: str, *, split: str = "train") -> FolderSource:
    return FolderSource(path, split)
