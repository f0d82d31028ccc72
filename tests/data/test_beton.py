"""`infoview prepare` and the ffcv backend: real .beton files written and read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from infoview.data import BetonFile, BetonSource, build_loader, open_source, write_beton
from infoview.errors import InfoviewError

pytestmark = pytest.mark.ffcv


def source_arrays(folder):
    src = open_source(f"folder:{folder}")
    images = torch.from_numpy(np.stack([src[i][0] for i in range(len(src))])).permute(0, 3, 1, 2)
    return src, images, torch.from_numpy(src.labels())


def read_loader(loader):
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


def test_raw_beton_reads_back_exactly_on_both_backends(image_folder, tmp_path):
    src, images, labels = source_arrays(image_folder)
    out = tmp_path / "raw.beton"
    summary = write_beton(src, out, write_mode="raw", num_workers=1)
    assert summary["images"] == 12 and summary["skipped"] == 0 and summary["bytes"] == out.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left

    loader = build_loader(f"beton:{out}", batch_size=5, shuffle=False, num_workers=1)
    assert loader.backend == "ffcv" and len(loader) == 3
    x, y = read_loader(loader)  # batches are copies: keeping them in a list is safe
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, images) and torch.equal(y, labels)

    x2, y2 = read_loader(build_loader(f"beton:{out}", batch_size=5, shuffle=False, backend="pytorch", num_workers=0))
    assert torch.equal(x2, images) and torch.equal(y2, labels)

    from ffcv.reader import Reader  # our checked reader agrees with ffcv's

    theirs, ours = Reader(str(out)), BetonFile(out)
    assert theirs.num_samples == ours.num_samples == 12
    assert theirs.metadata.tobytes() == ours.metadata.tobytes()


def test_jpg_beton_is_within_jpeg_tolerance(image_folder, tmp_path):
    src, images, labels = source_arrays(image_folder)
    out = tmp_path / "jpg.beton"
    write_beton(src, out, write_mode="jpg", jpeg_quality=90, num_workers=1)
    x, y = read_loader(build_loader(f"beton:{out}", batch_size=12, shuffle=False, num_workers=1))
    diff = (x.int() - images.int()).abs().float()
    assert torch.equal(y, labels)
    assert diff.mean() < 3 and diff.max() < 60
    assert out.stat().st_size < 12 * 32 * 32 * 3 + (4 << 20)
    x2, _ = read_loader(build_loader(f"beton:{out}", batch_size=12, shuffle=False, backend="pytorch", num_workers=0))
    assert (x2.int() - images.int()).abs().float().mean() < 3  # PIL decodes what libjpeg-turbo decodes


def test_ffcv_shards_and_order_match_the_pytorch_backend(tmp_path):
    out = tmp_path / "digits.beton"
    write_beton(open_source("digits", split="test"), out, write_mode="raw", num_workers=1)
    shards = []
    for rank in (0, 1):
        kw = dict(batch_size=30, split="test", seed=4, rank=rank, world_size=2, distributed=True, drop_last=False)
        ffcv = build_loader(f"beton:{out}", num_workers=1, **kw)
        torch_ = build_loader(f"beton:{out}", backend="pytorch", num_workers=0, **kw)
        ffcv.set_epoch(3), torch_.set_epoch(3)
        (xf, yf), (xt, yt) = read_loader(ffcv), read_loader(torch_)
        assert len(ffcv) == len(torch_) == 6 and xf.shape == (180, 3, 32, 32)
        assert torch.equal(xf, xt) and torch.equal(yf, yt)  # same images, same order
        ffcv.set_epoch(3, start_batch=2), torch_.set_epoch(3, start_batch=2)
        (xf2, _), (xt2, _) = read_loader(ffcv), read_loader(torch_)
        assert torch.equal(xf2, xf[60:]) and torch.equal(xt2, xf[60:])  # a resumed epoch, on both
        shards.append({tuple(img.flatten()[::7].tolist()) for img in xf})
    assert len(shards[0]) + len(shards[1]) >= 355 and len(shards[0] & shards[1]) <= 5  # duplicates in digits aside


def test_mixed_sizes_are_cropped_and_resized_alike_on_both_backends(tmp_path, smooth_image):
    from PIL import Image

    folder = tmp_path / "mixed"
    for i, (h, w) in enumerate([(32, 32), (48, 48), (30, 50), (50, 30)]):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(np.random.default_rng(i), max(h, w))[:h, :w]).save(folder / f"c{i % 2}/{i}.png")
    out = tmp_path / "mixed.beton"
    write_beton(open_source(f"folder:{folder}"), out, write_mode="raw", num_workers=1)
    ffcv = build_loader(f"beton:{out}", batch_size=4, shuffle=False, resolution=24, num_workers=1)
    torch_ = build_loader(f"beton:{out}", batch_size=4, shuffle=False, resolution=24, backend="pytorch", num_workers=0)
    (xf, yf), (xt, yt) = next(iter(ffcv)), next(iter(torch_))
    assert xf.shape == xt.shape == (4, 3, 24, 24) and torch.equal(yf, yt)
    diff = (xf.float() - xt.float()).abs().mean((1, 2, 3))
    assert diff.max() < 4  # the same centre crop; the resize filters differ a little
    assert (xf.float() - xt[torch.arange(4).roll(1)].float()).abs().mean((1, 2, 3)).min() > 10


def test_refuses_to_overwrite(image_folder, tmp_path):
    src = open_source(f"folder:{image_folder}")
    out = tmp_path / "x.beton"
    write_beton(src, out, write_mode="raw", num_workers=1)
    before = out.read_bytes()
    with pytest.raises(InfoviewError, match=r"x\.beton exists; pass overwrite=true"):
        write_beton(src, out, write_mode="jpg", num_workers=1)
    assert out.read_bytes() == before
    write_beton(src, out, write_mode="jpg", overwrite=True, num_workers=1)
    assert out.read_bytes() != before and BetonFile(out).num_samples == 12


def test_truncated_beton_is_a_clear_error(image_folder, tmp_path):
    out = tmp_path / "x.beton"
    write_beton(open_source(f"folder:{image_folder}"), out, write_mode="raw", num_workers=1)
    data = out.read_bytes()
    for cut in (10, 2000, len(data) // 2, len(data) - 24, len(data) - 7):
        bad = tmp_path / f"cut{cut}.beton"
        bad.write_bytes(data[:cut])
        with pytest.raises(InfoviewError, match=rf"cut{cut}\.beton is truncated or not an ffcv \.beton"):
            build_loader(f"beton:{bad}", batch_size=4)
    with pytest.raises(InfoviewError, match=r"does not exist; write one with `infoview prepare"):
        build_loader(f"beton:{tmp_path / 'missing.beton'}", batch_size=4)


def test_corrupt_image_fails_naming_it_or_is_skipped(image_folder, tmp_path):
    bad = image_folder / "dog" / "002.png"
    bad.write_bytes(b"garbage, not an image")
    src = open_source(f"folder:{image_folder}")
    out = tmp_path / "out" / "x.beton"
    with pytest.raises(InfoviewError, match=r"cannot read image .*dog/002\.png.*skip_bad=true"):
        write_beton(src, out, write_mode="raw", num_workers=2)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial or temp file
    summary = write_beton(src, out, write_mode="raw", skip_bad=True, num_workers=2)
    assert summary["images"] == 11 and summary["skipped"] == 1 and summary["skipped_files"] == [str(bad)]
    good = [i for i, f in enumerate(src.files) if f != str(bad)]
    assert np.array_equal(BetonSource(out).labels(), src.labels()[good])
    assert np.array_equal(BetonSource(out)[5][0], src[good[5]][0])


def test_cli_prepare_end_to_end(image_folder, tmp_path):
    out = tmp_path / "cli.beton"
    cmd = [sys.executable, "-m", "infoview", "prepare", f"folder:{image_folder}", str(out), "write_mode=raw", "num_workers=1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 12 and summary["skipped"] == 0 and summary["bytes"] == out.stat().st_size > 0
    assert summary["seconds"] >= 0
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"infoview prepare: error: {out} exists; pass overwrite=true to replace it"]


def test_a_beton_records_its_split_and_classes_and_refuses_another_split(tmp_path):
    out = tmp_path / "test.beton"
    write_beton(open_source("digits", split="test"), out, write_mode="raw", num_workers=1)
    record = json.loads((tmp_path / "test.beton.json").read_text())
    assert record["split"] == "test" and record["source"] == "digits" and record["images"] == 360
    assert record["classes"] == [str(d) for d in range(10)]
    src = open_source(f"beton:{out}", split="test")
    assert src.split == "test" and src.classes == record["classes"] and len(src) == 360
    with pytest.raises(InfoviewError, match="holds the 'test' split of digits, not 'train'"):
        open_source(f"beton:{out}", split="train")  # it used to serve the test images as any split
    (tmp_path / "test.beton.json").unlink()  # a .beton made elsewhere: no record, so no split to check here
    assert open_source(f"beton:{out}", split="train").split is None


def test_indices_name_the_images_they_come_with_on_both_backends(tmp_path):
    """with_indices: each image's index in the split, whatever the backend, rank, epoch or mid-epoch start."""
    out = tmp_path / "digits.beton"
    write_beton(open_source("digits", split="test"), out, write_mode="raw", num_workers=1)
    src = BetonSource(out)
    every = torch.from_numpy(np.stack([src.load(i)[0] for i in range(len(src))])).permute(0, 3, 1, 2)
    seen = []
    for rank in (0, 1):
        kw = dict(batch_size=30, split="test", seed=4, rank=rank, world_size=2, distributed=True, with_indices=True)
        for loader in (build_loader(f"beton:{out}", num_workers=1, **kw),
                       build_loader(f"beton:{out}", backend="pytorch", num_workers=0, **kw)):
            for epoch, start in ((0, 0), (3, 2)):
                loader.set_epoch(epoch, start_batch=start)
                batches = list(loader)
                assert len(batches) == 6 - start
                for images, labels, index in batches:
                    assert index.dtype == torch.int64 and index.shape == labels.shape
                    assert torch.equal(images, every[index]), (loader.backend, epoch)  # the index names the image
                    assert torch.equal(labels, torch.from_numpy(src.labels())[index])
                if epoch == 0:
                    seen.append(torch.cat([b[2] for b in batches]))
    assert torch.equal(seen[0], seen[1])  # the same indices on both backends
    assert len(set(seen[0].tolist()) & set(seen[2].tolist())) == 0  # the ranks read disjoint images
