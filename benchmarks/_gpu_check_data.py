"""benchmarks/gpu_check.py's data: ``make_data`` builds it (--make-data, and the dry run's tiny copy), ``read_data``
checks it."""
from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from _gpu_check_common import MANIFEST, UsageError, log, now_iso


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _prepare(subset: Path, out: Path, split: str) -> dict:
    """``infoview prepare folder:<subset> <out> split=<split> write_mode=jpg jpeg_quality=90``, in this process."""
    from infoview.cli import main as infoview_main

    args = ["prepare", f"folder:{subset}", str(out), f"split={split}", "write_mode=jpg", "jpeg_quality=90"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = infoview_main(args)
    if rc != 0:
        raise UsageError(f"`infoview {' '.join(args)}` failed (exit {rc}); its message is above")
    text = buf.getvalue()
    try:
        summary = json.loads(text[text.index("{"):])
    except ValueError:
        summary = {}
    return {"command": "infoview " + " ".join(shlex.quote(a) for a in args), "images": summary.get("images"),
            "seconds": summary.get("seconds"), "bytes": out.stat().st_size}


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
    need = {"train": max(sizes["train_per_class"], sizes["views_per_class"]), "test": sizes["test_per_class"]}
    for split, per_class in files.items():
        short = {c: len(f) for c, f in per_class.items() if len(f) < need[split]}
        if short:
            raise UsageError(f"{cifar10}/{split}: classes with fewer than {need[split]} images: {short}")
    return files


def _write_betons(files: dict, sizes: dict, tmp_out: Path) -> dict:
    """The train and test .beton files, from a per-class subset of symlinks; their records for the manifest."""
    betons = {}
    with tempfile.TemporaryDirectory(prefix="infoview-gpu-check-subset-") as tmp:
        subset = Path(tmp) / "cifar10_subset"
        for split, per_class_n in (("train", sizes["train_per_class"]), ("test", sizes["test_per_class"])):
            for cls, paths in files[split].items():
                d = subset / split / cls
                d.mkdir(parents=True)
                for p in paths[:per_class_n]:
                    (d / p.name).symlink_to(p.resolve())
        for split in ("train", "test"):
            betons[f"{split}_beton"] = _prepare(subset, tmp_out / f"{split}.beton", split)
    return betons


def _copy_views(train_files: dict[str, list[Path]], per_class: int, tmp_out: Path) -> dict:
    """Real JPEG files (symlinks would not travel to the GPU machine) for benchmarks/views.py --data."""
    for cls, paths in train_files.items():
        d = tmp_out / "views" / cls
        d.mkdir(parents=True)
        for p in paths[:per_class]:
            shutil.copyfile(p, d / p.name)
    return {"images": per_class * len(train_files), "bytes": _size(tmp_out / "views")}


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
    manifest.update(_write_betons(files, sizes, tmp_out))
    manifest["views"] = _copy_views(files["train"], sizes["views_per_class"], tmp_out)
    manifest["photos"] = _copy_photos(photos, sizes["photos"], tmp_out)
    if manifest["photos"] is None:
        manifest["photos_note"] = (f"no photos ({photos} missing or --photos 0): the r50-224 case reads the CIFAR-10 "
                                   "views folder at 256 px instead")
    for split in ("train", "test"):  # the commands as they name the final folder
        manifest[f"{split}_beton"]["command"] = manifest[f"{split}_beton"]["command"].replace(str(tmp_out), str(out))
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
    needed = ["train.beton", "test.beton", "views"] + (["photos"] if manifest.get("photos") else [])
    missing = [n for n in needed if not (data / n).exists()]
    if missing:
        raise UsageError(f"--data {data} lacks {', '.join(missing)}; {hint}")
    return manifest
