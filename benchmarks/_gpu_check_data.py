"""benchmarks/gpu_check.py's data: ``make_data`` builds it (--make-data, and the dry run's tiny copy), ``read_data``
checks it."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from _gpu_check_common import MANIFEST, UsageError, log, now_iso

PACK = "cifar10_jpegs.npz"


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_request(out: Path, cifar10: Path, sizes: dict, overwrite: bool) -> None:
    """Refuse bad input before anything is written; an earlier --make-data folder is removed only with ``overwrite``."""
    for split in ("train", "test"):
        if not (cifar10 / split).is_dir():
            raise UsageError(f"--cifar10 {cifar10} has no {split}/ folder (expected ImageFolder JPEGs: "
                             f"{split}/<class>/*.jpg; CIFAR-10 as JPEGs is in ../shared/data/cifar10)")
    for key, value in sizes.items():
        if value < (0 if key == "photos" else 1):
            raise UsageError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'photos' else '>= 1'}, got {value}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} already exists and is not empty; pass --overwrite to replace it, or choose "
                             "another folder")
        if not (out / MANIFEST).is_file():
            raise UsageError(f"{out} is not empty and holds no {MANIFEST}: not a folder made by --make-data, so it "
                             "is left alone; choose another folder")
        shutil.rmtree(out)


def _source_files(cifar10: Path, sizes: dict) -> dict[str, dict[str, list[Path]]]:
    """The JPEGs of each split and class of ``cifar10``, after checking that every class has enough of them."""
    files = {split: _class_files(cifar10 / split) for split in ("train", "test")}
    if not files["train"] or files["train"].keys() != files["test"].keys():
        raise UsageError(f"{cifar10}: train/ and test/ must hold the same class folders")
    need = {"train": sizes["train_per_class"], "test": sizes["test_per_class"]}
    for split, per_class in files.items():
        short = {c: len(f) for c, f in per_class.items() if len(f) < need[split]}
        if short:
            raise UsageError(f"{cifar10}/{split}: classes with fewer than {need[split]} images: {short}")
    return files


def _pack(files: dict, sizes: dict, tmp_out: Path) -> dict:
    """CIFAR-10's JPEGs, per split and class, as they are (no second lossy encoding), in one file: ``PACK``.

    Each split is its files' bytes end to end (``<split>_bytes``), where each
    file starts (``<split>_offsets``, one more than files) and its class
    (``<split>_labels``); ``classes`` names them. 60,000 files would each cost
    a file's overhead to carry; one .npz of 55 MB travels whole.
    """
    import numpy as np

    arrays, record = {}, {}
    classes = sorted(files["train"])
    for split, per_class_n in (("train", sizes["train_per_class"]), ("test", sizes["test_per_class"])):
        blobs, labels = [], []
        for label, cls in enumerate(classes):
            for path in files[split][cls][:per_class_n]:
                blobs.append(path.read_bytes())
                labels.append(label)
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = offsets
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int16)
        record[split] = {"images": len(blobs), "bytes": int(offsets[-1])}
    arrays["classes"] = np.asarray(classes)
    np.savez(tmp_out / PACK, **arrays)
    return {**record, "file": PACK, "bytes": (tmp_out / PACK).stat().st_size}


def unpack_cifar10(data: Path, dest: Path) -> Path:
    """``dest``/train/<class>/<i>.jpg and test/...: the packed JPEGs as an ImageFolder (folder: source); returns dest."""
    import numpy as np

    with np.load(data / PACK) as pack:
        classes = [str(c) for c in pack["classes"]]
        for split in ("train", "test"):
            blob, offsets, labels = pack[f"{split}_bytes"], pack[f"{split}_offsets"], pack[f"{split}_labels"]
            for cls in classes:
                (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for i, label in enumerate(labels.tolist()):
                (dest / split / classes[label] / f"{i:05d}.jpg").write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())
    return dest


def _copy_photos(photos: Path | None, n: int, tmp_out: Path) -> dict | None:
    """Photos for the r50-224 case: folder:<photos> holds one class folder; None when there are none."""
    if n and photos is not None and photos.is_dir():
        chosen = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
        if chosen:
            d = tmp_out / "photos" / "coco128"
            d.mkdir(parents=True)
            for p in chosen:
                shutil.copyfile(p, d / p.name)
            return {"source": str(photos), "images": len(chosen), "bytes": _size(tmp_out / "photos")}
    return None


def make_data(out: Path, cifar10: Path, photos: Path | None, sizes: dict, overwrite: bool = False,
              quiet: bool = False) -> dict:
    """Build the GPU check's data in ``out``; returns its manifest (also written to out/data.json)."""
    _check_request(out, cifar10, sizes, overwrite)
    if not quiet:
        log(f"making data in {out}")
    files = _source_files(cifar10, sizes)

    t0 = time.perf_counter()
    tmp_out = out.with_name(f".{out.name}.tmp")
    if tmp_out.exists():
        shutil.rmtree(tmp_out)
    tmp_out.mkdir(parents=True)
    manifest: dict = {"made": now_iso(), "cifar10": str(cifar10), "sizes": dict(sizes), "classes": sorted(files["train"])}
    manifest["cifar10_pack"] = _pack(files, sizes, tmp_out)
    manifest["photos"] = _copy_photos(photos, sizes["photos"], tmp_out)
    if manifest["photos"] is None:
        manifest["photos_note"] = (f"no photos ({photos} missing or --photos 0): the r50-224 case reads the CIFAR-10 "
                                   "training JPEGs at 256 px instead")
    manifest["total_bytes"] = _size(tmp_out)
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp_out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_out.rename(out)
    return manifest


def read_data(data: Path) -> dict:
    """The manifest of a --make-data folder, after checking that everything the steps read is there."""
    hint = f"make it here with: python benchmarks/gpu_check.py --make-data {data}"
    if not (data / MANIFEST).is_file():
        raise UsageError(f"--data {data} holds no {MANIFEST} (not made by --make-data, or not carried); {hint}")
    manifest = json.loads((data / MANIFEST).read_text())
    needed = [PACK] + (["photos"] if manifest.get("photos") else [])
    missing = [n for n in needed if not (data / n).exists()]
    if missing:
        raise UsageError(f"--data {data} lacks {', '.join(missing)}; {hint}")
    return manifest
