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

    Symbolic links are followed, and each image file is listed once by its real path: a link loop or a second
    link to a folder or file adds nothing, and one file under two classes is an error naming it.

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
        owner: dict[str, tuple[str, str]] = {}  # an image's real path -> (its class, the path it was found at)
        for label, cls in enumerate(subdirs):
            found = _class_images(root / cls)
            for path in found:
                real = os.path.realpath(path)
                other, first = owner.setdefault(real, (cls, path))
                if other != cls:
                    raise InfoviewError(
                        f"folder {root}: the image {real} is under two classes, '{other}' ({first}) and "
                        f"'{cls}' ({path}); an image belongs to one class: remove one of them"
                    )
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


def _class_images(folder: Path) -> list[str]:
    """The image files under one class folder, each once: links are followed, but a folder or file reached
    again (a link loop, two links to one place) is not listed again. Sorted, as walked."""
    found: list[str] = []
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # reached again through a link: walked already (a loop would never end)
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if is_image_file(name) and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                found.append(path)
    return found


@register_source("folder", kind="images", usage="folder:<path>",
                 help="one subfolder per class (<path>/<class>/**/<image>); train/, test/, val/ inside pick the split",
                 looks_like=os.path.isdir)
def open_folder(path: str, *, split: str = "train") -> FolderSource:
    return FolderSource(path, split)
