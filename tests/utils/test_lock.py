"""One run per folder: infoview.utils.lock (the end-to-end refusal: tests/pretrain/test_pretrain_engine.py)."""
from __future__ import annotations

import contextlib
import json
import os
import socket

import pytest

from infoview.errors import InfoviewError
from infoview.utils.lock import LOCK_NAME, hold_folder, hold_result_folder


def test_a_held_folder_names_its_holder_and_is_left_as_the_run_left_it(tmp_path):
    out = tmp_path / "a" / "b"
    with hold_folder(out, "knn") as held:
        assert held == out and out.is_dir()
        holder = json.loads((out / LOCK_NAME).read_text())
        assert (holder["command"], holder["pid"], holder["host"]) == ("knn", os.getpid(), socket.gethostname())
        with pytest.raises(InfoviewError, match=f"in use by infoview knn \\(pid {os.getpid()} on host"):
            with hold_folder(out, "pretrain"):
                pass
        (out / "result.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]  # the lock goes with the run
    with hold_folder(out, "knn"):  # free again
        pass


def test_a_run_that_wrote_nothing_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_folder(tmp_path / "a" / "b", "pretrain"):
            raise RuntimeError("out of memory")
    assert list(tmp_path.iterdir()) == []  # neither b nor a, which it made


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"command": "pretrain", "host": "h", "pid": 1, "start": "x"}))
    with hold_folder(tmp_path, "pretrain"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_ranks_other_than_0_hold_nothing(tmp_path):
    with hold_folder(tmp_path / "x", "pretrain", holder=False):
        assert not (tmp_path / "x").exists()


def test_a_file_in_the_folders_place_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(InfoviewError, match=r"out_dir .*/f/run: .*/f is a file; give a folder"):
        with hold_folder(tmp_path / "f" / "run", "pretrain"):
            pass
    with pytest.raises(InfoviewError, match="is a file"):
        with hold_result_folder(tmp_path / "f", "knn.json", False, "knn"):
            pass


def test_a_finished_result_is_not_overwritten_unasked(tmp_path):
    with hold_result_folder(tmp_path, "knn.json", False, "knn") as out:
        (out / "knn.json").write_text("{}")
    with pytest.raises(InfoviewError, match="already holds a finished result"):
        with hold_result_folder(tmp_path, "knn.json", False, "knn"):
            pass
    with hold_result_folder(tmp_path, "knn.json", True, "knn"):
        pass


def test_the_lock_goes_with_its_process_even_while_the_processes_it_forked_live_on(tmp_path):
    """A run killed with kill -9 leaves its DataLoader workers (forked) for a moment: they hold no lock."""
    import signal
    import subprocess
    import sys

    holder = ("import os, sys, time\n"
              "from infoview.utils.lock import hold_folder\n"
              "with hold_folder(sys.argv[1], 'pretrain'):\n"
              "    child = os.fork()\n"
              "    if child == 0:\n"
              "        time.sleep(120)\n"
              "        os._exit(0)\n"
              "    print(child, flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(InfoviewError, match="in use by infoview pretrain"):
            with hold_folder(tmp_path, "knn"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        os.kill(child, 0)  # the forked child is still there ...
        with hold_folder(tmp_path, "knn"):  # ... and the folder is free
            pass
    finally:
        proc.kill()
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
