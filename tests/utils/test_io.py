import os
import stat

import pytest

from infoview.utils.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_file_with_normal_mode(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_writer_that_replaces_the_temp_file_still_leaves_the_normal_mode(tmp_path):
    # safetensors' save_file writes its own file in the temp's place, with mode 0600: exports came out unreadable
    # to the group
    import os
    import stat

    from infoview.utils.io import atomic_path

    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"weights")
        os.close(fd)
    assert target.read_bytes() == b"weights"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
