"""backend=resident: the split held decoded on the device gives the other backends' batches, order and indices."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from infoview.data import build_loader
from infoview.data.sources import ArraySource
from infoview.errors import InfoviewError


def jpeg_folder(root, per_class: int = 7, size: int = 40):
    """root/<class>/<i>.jpg, noisy enough that a wrong image or a wrong resize shows."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return f"folder:{root}"


def batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start_batch=start)
    return [tuple(t.cpu() for t in b) for b in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y))
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("drop_last,world", [(True, 1), (False, 1), (True, 2), (False, 2)])
def test_the_same_batches_as_the_pytorch_backend(tmp_path, drop_last, world):
    source = jpeg_folder(tmp_path / "jpg")  # 21 images of 40 x 46, decoded and fitted to 24 px
    for rank in range(world):
        kw = dict(batch_size=4, seed=5, drop_last=drop_last, num_workers=0, resolution=24, with_indices=True,
                  rank=rank if world > 1 else None, world_size=world if world > 1 else None,
                  distributed=world > 1)
        resident = build_loader(source, backend="resident", **kw)
        reference = build_loader(source, backend="pytorch", **kw)
        assert resident.backend == "resident" and len(resident) == len(reference)
        for epoch, start in ((0, 0), (3, 0), (3, 1)):  # a later epoch, and a run resumed at its second batch
            got, want = batches(resident, epoch, start), batches(reference, epoch, start)
            assert got and same(got, want), (rank, epoch, start)
        images = got[0][0]
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 24, 24)
        assert images.is_contiguous(memory_format=torch.channels_last)  # the loaders' (B, H, W, 3) memory


def test_iterating_again_moves_to_the_next_epoch_like_the_other_backends():
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    source = ArraySource("arr", images, np.arange(30) % 4)
    resident = build_loader(source, batch_size=8, backend="resident", seed=2, num_workers=0)
    reference = build_loader(source, batch_size=8, backend="pytorch", seed=2, num_workers=0)
    for _ in range(3):
        assert same([tuple(b) for b in resident], [tuple(b) for b in reference])


def test_a_split_above_the_cap_is_refused_before_anything_is_decoded(tmp_path, monkeypatch):
    from infoview.data import resident

    source = jpeg_folder(tmp_path / "jpg")
    monkeypatch.setattr(resident.ResidentSplit, "_decode", lambda *a, **k: pytest.fail("decoded above the cap"))
    with pytest.raises(InfoviewError) as err:
        build_loader(source, batch_size=4, backend="resident", resolution=32, num_workers=0, resident_cap=60_000)
    msg = str(err.value)
    assert "\n" not in msg
    assert "needs 64,512 bytes (64.5 KB)" in msg and "(21 images x 32 x 32 x 3)" in msg
    assert "above the cap of 60,000 bytes (60 KB)" in msg
    assert "data.resident_cap_gb" in msg and "data.backend=pytorch" in msg


def test_the_training_and_online_loaders_of_one_split_share_one_tensor(tmp_path):
    source = jpeg_folder(tmp_path / "jpg")
    train = build_loader(source, batch_size=4, backend="resident", resolution=24, num_workers=0)
    online = build_loader(source, batch_size=16, backend="resident", resolution=24, num_workers=0, shuffle=False)
    other = build_loader(source, batch_size=4, backend="resident", resolution=16, num_workers=0)
    assert online.split is train.split and other.split is not train.split


def test_an_unreadable_image_is_replaced_as_the_pytorch_backend_does(tmp_path):
    source = jpeg_folder(tmp_path / "jpg")
    bad = sorted((tmp_path / "jpg").rglob("*.jpg"))[1]
    bad.write_bytes(b"not an image")
    kw = dict(batch_size=21, shuffle=False, num_workers=0, resolution=24, with_indices=True)
    with pytest.raises(InfoviewError, match="1.jpg.*data.skip_bad=true"):
        build_loader(source, backend="resident", **kw)
    resident = build_loader(source, backend="resident", skip_bad=True, **kw)
    reference = build_loader(source, backend="pytorch", skip_bad=True, **kw)
    got, want = batches(resident), batches(reference)
    assert same(got, want) and got[0][2].tolist()[:3] == [0, 2, 2]
    assert resident.skipped == {1}


def test_bad_combinations_are_one_line_errors():
    with pytest.raises(InfoviewError, match="decode=device is the pytorch backend's"):
        build_loader("digits", batch_size=4, backend="resident", decode="device")
    with pytest.raises(InfoviewError, match="backend must be one of auto, ffcv, pytorch, resident"):
        build_loader("digits", batch_size=4, backend="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InfoviewError, match="no CUDA device"):
            build_loader("digits", batch_size=4, backend="resident", device="cuda")


def test_a_resident_split_is_read_in_every_order_it_is_asked_for():
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    loader = build_loader(ArraySource("arr", images, np.arange(10)), batch_size=3, backend="resident",
                          shuffle=False, num_workers=0)
    labels = [y.tolist() for _, y in loader]
    assert list(itertools.chain(*labels)) == list(range(10))  # unshuffled, the last partial batch kept
