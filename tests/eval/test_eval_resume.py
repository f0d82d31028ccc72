"""Ctrl-C or SIGTERM stops `infoview linear`, `segment` and `detect` between two steps with a checkpoint and one
line; the same command run again goes on from it and writes the result of a run never stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infoview.cli import main

pytestmark = pytest.mark.slow

LINEAR = ["linear", "data.source=digits", "train.epochs=2", "train.batch_size=64", "data.num_workers=0",
          "train.progress=false"]  # and backbone=: a tiny pretraining run's (16 px)
TINY = ["data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.cifar_stem=true",
        "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16", "train.progress=false",
        "train.eval_every=0", "train.threads=1", "train.max_steps=2"]
SEGMENT = ["segment", "backbone=random:resnet18", "data.source=shapes", "data.size=32", "data.batch_size=2",
           "train.max_steps=6", "data.num_workers=0", "train.progress=false", "ignore_index=0", "train.device=cpu",
           "plot.num_images=0"]
DETECT = ["detect", "backbone=random:resnet18", "task=bbox", "data.holdout=3", "train.max_steps=4", "model.min_size=64",
          "model.max_size=96", "model.fpn_channels=32", "model.box_head_dim=64", "model.roi_batch_size=64",
          "data.num_workers=0", "data.batch_size=2", "optim.warmup_steps=2", "train.progress=false",
          "train.log_every=1", "train.device=cpu", "train.threads=1"]
CASES = {"linear": (LINEAR, "linear.json"), "linear_augment": ([*LINEAR, "augment=true", "train.epochs=1"], "linear.json"),
         "segment": (SEGMENT, "segment.json"), "detect": (DETECT, "detect.json")}
TIMES = ("out_dir", "time_s", "train_s", "eval_s")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", *TINY, f"out_dir={out}"]) == 0
    return f"backbone={out}"


def _result(out: Path, name: str) -> dict:
    result = json.loads((out / name).read_text())
    return {k: v for k, v in result.items() if k not in TIMES}


@pytest.mark.parametrize("case, sig, stop_after", [("linear", signal.SIGINT, 30), ("linear_augment", signal.SIGTERM, 12),
                                                   ("segment", signal.SIGINT, 2), ("detect", signal.SIGTERM, 1)])
def test_a_stopped_evaluator_saves_says_how_to_go_on_and_ends_as_a_run_never_stopped(
        case, sig, stop_after, tmp_path, capsys, monkeypatch, backbone):
    args, name = CASES[case]
    if args[0] == "linear":
        args = [*args, backbone]
    if name == "detect.json":
        pytest.importorskip("pycocotools")
    assert main([*args, f"out_dir={tmp_path / 'whole'}"]) == 0
    expected = _result(tmp_path / "whole", name)
    assert not (tmp_path / "whole" / "checkpoints").exists()  # removed once the result is written
    log = (tmp_path / "whole" / "train_log.csv").read_text() if case == "detect" else None
    capsys.readouterr()

    from infoview.training import loop

    real, taken = loop.optimizer_step, []

    def step(*a, **k):  # the signal arrives during a step; the loop stops after the next one it sees it in
        real(*a, **k)
        taken.append(1)
        if len(taken) == stop_after:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(loop, "optimizer_step", step)
    out = tmp_path / "cut"
    assert main([*args, f"out_dir={out}"]) == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    command = args[0]
    assert said.startswith(f"infoview {command}: stopped by {signal.Signals(sig).name} at step {stop_after + 1} of ")
    assert said.endswith(f"saved {out / 'checkpoints' / 'last.pt'}. Run the same command again to resume"), said
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == stop_after + 1
    assert not (out / name).exists()

    monkeypatch.setattr(loop, "optimizer_step", real)
    assert main([*args, f"out_dir={out}"]) == 0  # the same command
    assert _result(out, name) == expected
    assert not (out / "checkpoints").exists()
    if log is not None:
        assert (out / "train_log.csv").read_text() == log
    assert main([*args, f"out_dir={out}"]) == 2  # and a finished result is not run again
    assert "already holds a finished result" in capsys.readouterr().err


def test_a_checkpoint_of_other_settings_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, backbone):
    from infoview.training import loop

    args = [*LINEAR, backbone]
    real, taken = loop.optimizer_step, []

    def step(*a, **k):
        real(*a, **k)
        taken.append(1)
        if len(taken) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "optimizer_step", step)
    assert main([*args, f"out_dir={tmp_path}"]) == 130
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    monkeypatch.setattr(loop, "optimizer_step", real)
    capsys.readouterr()
    assert main([*args, f"out_dir={tmp_path}", "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an unfinished run with other settings (optim.lr: 0.1 -> 0.5)" in err[0], err
    assert main([*args, f"out_dir={tmp_path}", "train.progress=true"]) == 0  # how it runs may change


_LONG_STEP = """
import hashlib, sys
from infoview.cli import main
from infoview.training import loop

real, taken = loop.optimizer_step, []

def step(*args, **kwargs):  # the second step stays inside one C call, as a detector's backward pass on a CPU does
    taken.append(1)
    if len(taken) == 2:
        print("in the long call", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 15_000_000)  # a few seconds
    return real(*args, **kwargs)

loop.optimizer_step = step
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_in_a_long_detect_step_is_answered_at_once_and_saves_after_the_step(tmp_path):
    pytest.importorskip("pycocotools")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _LONG_STEP, *DETECT, "train.max_steps=20", f"out_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "in the long call", proc.stderr.read()[-2000:]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        line = proc.stderr.readline()
        while line.startswith("infoview detect: train.max_steps=20 cuts the run"):  # (said at the start)
            line = proc.stderr.readline()
        assert "Ctrl-C: saving between two steps, then stopping" in line  # at once, while the call goes on
        assert proc.poll() is None
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    said = proc.stderr.read().strip().splitlines()[-1]
    assert said.startswith("infoview detect: stopped by SIGINT at step 3 of 20; saved "), said
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("case", ["segment", "detect"])
def test_train_ckpt_every_steps_saves_as_the_run_goes_and_the_checkpoint_goes_once_the_result_is_written(
        tmp_path, monkeypatch, case):
    from infoview.training.fit_state import FitCheckpoint

    real, saved = FitCheckpoint.save, []
    monkeypatch.setattr(FitCheckpoint, "save", lambda self, opt, at, *a, **k: saved.append(at.step)
                        or real(self, opt, at, *a, **k))
    args, name = CASES[case]
    assert main([*args, f"out_dir={tmp_path}", "train.ckpt_every_steps=2"]) == 0
    steps = int(next(a for a in args if a.startswith("train.max_steps=")).split("=")[1])
    assert saved == list(range(2, steps + 1, 2))  # every 2 steps, the last one the run's end
    assert (tmp_path / name).is_file() and not (tmp_path / "checkpoints").exists()
