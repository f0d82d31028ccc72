"""decode=device: workers read bytes, the batch is decoded where the model runs (here the CPU's decoder)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infoview.data import build_loader
from infoview.errors import InfoviewError


def photo_folder(root, per_class: int = 6, size=(48, 60), fmt: str = "jpg"):
    """root/<class>/<i>.<fmt>: smooth photos (JPEG keeps them close), of a size that is not square."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            chans = [rng.uniform(30, 220) + rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy for _ in range(3)]
            image = np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / c / f"{i}.{fmt}")
    return f"folder:{root}"


def epoch(loader, n=0, start=0):
    loader.set_epoch(n, start_batch=start)
    return [tuple(t for t in b) for b in loader]


@pytest.mark.parametrize("resolution", [24, 0])
def test_the_same_order_labels_and_indices_and_the_pixels_within_a_level(tmp_path, resolution):
    source = photo_folder(tmp_path / "photos")
    kw = dict(batch_size=5, seed=4, num_workers=0, with_indices=True, resolution=resolution or None)
    device = build_loader(source, decode="device", **kw)
    workers = build_loader(source, decode="workers", **kw)
    assert device.resolution == workers.resolution == (resolution or 48)
    got, want = epoch(device, 2, 1), epoch(workers, 2, 1)
    assert len(got) == len(want) == 1  # 12 images, 2 batches of 5 an epoch, the second
    for (gi, gl, gx), (wi, wl, wx) in zip(got, want):
        assert torch.equal(gl, wl) and torch.equal(gx, wx)
        assert gi.shape == wi.shape and gi.dtype == torch.uint8
        assert gi.is_contiguous(memory_format=torch.channels_last)
        diff = (gi.int() - wi.int()).abs()
        if resolution:  # torch's antialiased bilinear against Pillow's: a level at most
            assert diff.max() <= 1 and diff.float().mean() < 0.5
        else:  # a centre crop only: the same decoder (libjpeg-turbo), the same pixels
            assert diff.max() == 0


def test_a_file_that_is_not_a_jpeg_is_decoded_on_the_cpu_named_and_counted(tmp_path, capsys):
    source = photo_folder(tmp_path / "photos", per_class=3)
    photo_folder(tmp_path / "photos", per_class=1, fmt="png")  # a/0.png, b/0.png beside the JPEGs
    kw = dict(batch_size=8, shuffle=False, num_workers=0, resolution=24)
    device = build_loader(source, decode="device", **kw)
    workers = build_loader(source, decode="workers", **kw)
    got = torch.cat([x for x, _ in device])
    want = torch.cat([x for x, _ in workers])
    pngs = [i for i, f in enumerate(device.source.files) if f.endswith(".png")]
    assert len(pngs) == 2 and torch.equal(got[pngs], want[pngs])  # the same CPU reader as the workers'
    assert device.decoder.cpu_decoded == set(pngs)
    err = capsys.readouterr().err
    assert err.count("on the CPU (not a JPEG") == 2 and "0.png" in err
    list(device)  # a second epoch names nothing again
    assert "on the CPU" not in capsys.readouterr().err


def test_a_jpeg_the_device_decoder_refuses_is_decoded_on_the_cpu(tmp_path, monkeypatch, capsys):
    import torchvision.io

    source = photo_folder(tmp_path / "photos", per_class=2)
    refused = (tmp_path / "photos" / "b" / "1.jpg").read_bytes()
    real = torchvision.io.decode_jpeg

    def fussy(data, **kw):  # as nvJPEG refuses what it cannot decode (CMYK, arithmetic coding, ...)
        items = data if isinstance(data, list) else [data]
        if any(bytes(d.numpy()) == refused for d in items):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", fussy)
    loader = build_loader(source, decode="device", batch_size=4, shuffle=False, num_workers=0, resolution=24)
    images = torch.cat([x for x, _ in loader])
    reference = torch.cat([x for x, _ in build_loader(source, batch_size=4, shuffle=False, num_workers=0,
                                                      resolution=24)])
    assert loader.decoder.cpu_decoded == {3}
    assert (images.int() - reference.int()).abs().max() <= 1
    assert "b/1.jpg on the CPU (the device's JPEG decoder refused it: nvjpeg: unsupported JPEG" in capsys.readouterr().err


def test_an_unreadable_jpeg_is_an_error_naming_it_or_with_skip_bad_replaced(tmp_path):
    source = photo_folder(tmp_path / "photos", per_class=3)
    bad = tmp_path / "photos" / "a" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # a JPEG's first bytes, cut short
    kw = dict(batch_size=6, shuffle=False, num_workers=0, resolution=24, with_indices=True)
    with pytest.raises(InfoviewError) as err:
        list(build_loader(source, decode="device", **kw))
    assert "a/1.jpg" in str(err.value) and "data.skip_bad=true" in str(err.value) and "\n" not in str(err.value)
    loader = build_loader(source, decode="device", skip_bad=True, **kw)
    images, _, index = next(iter(loader))
    assert index.tolist() == [0, 2, 2, 3, 4, 5]  # image 1 unreadable: image 2 took its place (CPU-fitted)
    assert loader.skipped == {1}  # counted as the workers' replacements are (pretrain.json's skipped_images)
    assert (images[1].int() - images[2].int()).abs().max() <= 1


def test_a_beton_of_jpegs_decodes_on_the_device_and_decoded_arrays_are_refused(tmp_path):
    pytest.importorskip("ffcv")
    from infoview.data import write_beton
    from infoview.data.sources import open_source

    source = photo_folder(tmp_path / "photos", per_class=3)
    beton = tmp_path / "p.beton"
    write_beton(open_source(source), beton, write_mode="jpg", num_workers=1)
    kw = dict(batch_size=6, shuffle=False, num_workers=0, resolution=24, backend="pytorch")
    got = torch.cat([x for x, _ in build_loader(f"beton:{beton}", decode="device", **kw)])
    want = torch.cat([x for x, _ in build_loader(f"beton:{beton}", **kw)])
    assert (got.int() - want.int()).abs().max() <= 1
    with pytest.raises(InfoviewError, match="digits holds decoded arrays.*data.backend=resident"):
        build_loader("digits", batch_size=4, decode="device")
    with pytest.raises(InfoviewError, match="decode must be one of workers, device"):
        build_loader("digits", batch_size=4, decode="gpu")


def test_decoding_ahead_stops_with_the_epoch_and_the_next_epoch_reads_on(tmp_path):
    """The decoding thread runs ahead; a run that stops mid-epoch (max_steps, an error) leaves the workers free."""
    import threading

    source = photo_folder(tmp_path / "photos", per_class=8)
    kw = dict(batch_size=2, seed=1, num_workers=2, resolution=24, with_indices=True)
    device = build_loader(source, decode="device", **kw)
    workers = build_loader(source, decode="workers", **kw)
    for epoch_ in range(3):
        for i, (got, want) in enumerate(zip(device, workers)):
            assert torch.equal(got[2], want[2])  # the same images in the same order
            if i == 1:
                break  # mid-epoch, with batches decoded ahead
    assert not any(t.name == "infoview-decode" for t in threading.enumerate())
    assert [len(b[0]) for b in epoch(device, 5)] == [2] * 8  # a whole epoch after the cut ones
