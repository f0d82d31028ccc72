"""`infoview pretrain` end to end on CPU: outputs, resume, bad input."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from infoview.cli import main
from infoview.objectives import Objective, Terms, available, register

pytestmark = pytest.mark.slow


def pretrain(args: list[str]) -> int:
    return main(["pretrain", *args])


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_config_metrics_checkpoint_and_result(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=4", "train.log_every=2", "objective.name=ml_cpc",
                     "objective.alpha=0.5", "train.eval_every=1", "monitor.max_images=300"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 4 and result["global_batch"] == 16
    # the bound is certified on the 16 x 16 cross-view matrix: ML-CPC's ceiling is log(m / alpha), m = 16
    assert result["mi_ceiling"] == pytest.approx(math.log(16 / 0.5))
    assert result["mi"] <= result["mi_ceiling"]
    assert isinstance(result["mi_estimate"], float)  # what the in-batch training rows read
    assert 0 <= result["online_knn_top1"] <= 100 and 0 <= result["online_probe_top1"] <= 100

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["objective"] == {"name": "ml_cpc", "alpha": 0.5}
    assert cfg["_provenance"]["git_commit"] and cfg["_provenance"]["command"]  # which code and command made it

    rows = read_metrics(out)
    steps = [int(r["step"]) for r in rows if r["loss"]]
    assert steps == [2, 4]
    assert all(float(r["mi_ceiling"]) == pytest.approx(math.log(32), rel=1e-5) and r["mi"] and r["mi_estimate"]
               and float(r["lr"]) > 0 for r in rows if r["loss"])
    online = [r for r in rows if r["online_knn_top1"]]
    assert len(online) == 1 and online[0]["online_probe_top1"]  # online monitors under their own names
    assert any((out / "tb").iterdir())

    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # plain tensors and values only
    assert state["step"] == 4 and state["config"]["model"]["arch"] == "resnet18"
    assert json.loads((out / "pretrain.json").read_text())["provenance"]["git_commit"]


@pytest.mark.parametrize("name", available())
def test_every_objective_trains_with_simclr(tiny, tmp_path, name):
    assert pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=2", f"objective.name={name}"]) == 0
    rows = read_metrics(tmp_path)
    assert rows and all(r["loss"] not in ("", "nan") for r in rows)


@pytest.mark.parametrize("objective", ["infonce", "ring", "ml_cpc"])
def test_moco_with_queue_and_schedules(tiny, tmp_path, objective, capsys):
    extra = {"ring": ["objective.anneal_epochs=1"], "ml_cpc": ["objective.alpha_start=10", "objective.anneal_epochs=1"]}
    assert pretrain([*tiny, f"out_dir={tmp_path}", "method=moco", "moco.queue_size=64", "train.max_steps=3", f"objective.name={objective}",
                     *extra.get(objective, [])]) == 0
    result = json.loads(capsys.readouterr().out)
    # certified on the batch's 16 x 16 query-key matrix, not on the queue of older keys
    if objective != "ml_cpc":
        assert result["mi_ceiling"] == pytest.approx(math.log(16))
    assert result["mi"] <= result["mi_ceiling"]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert int(state["model"]["queue.ptr"]) == (3 * 16) % 64  # MoCo v2: one view's keys enqueued each step
    assert any(k.startswith("key.module.") for k in state["model"])  # the momentum encoder is saved


def _final_weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny, tmp_path):
    """A run of S steps killed (SIGKILL) mid-way and resumed ends exactly where an uninterrupted run does."""
    steps = 30
    args = [*tiny, "train.max_steps=%d" % steps, "train.ckpt_every_steps=1", "train.log_every=1",
            "objective.name=ml_cpc", "objective.alpha_start=4", "objective.anneal_epochs=0.5", "optim.name=lars"]
    cmd = [sys.executable, "-m", "infoview.cli", "pretrain", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref = tmp_path / "uninterrupted"
    subprocess.run([*cmd, f"out_dir={ref}"], check=True, capture_output=True, env=env, timeout=600)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"out_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    last = out / "checkpoints" / "last.pt"
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                step = torch.load(last, weights_only=True)["step"]
            except Exception:  # being replaced right now
                step = 0
            if step >= steps // 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert killed_at < steps

    resumed = subprocess.run([*cmd, f"out_dir={out}"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final_weights(ref), _final_weights(out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = [int(r["step"]) for r in read_metrics(out) if r["loss"]]
    assert logged == list(range(1, steps + 1))  # every step once, nothing lost or doubled


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_one_is_kept(tiny, tmp_path, capsys):
    args = [*tiny, f"out_dir={tmp_path}", "train.max_steps=3", "train.ckpt_every_steps=1"]
    assert pretrain(args) == 0
    ckpt = tmp_path / "checkpoints"
    last, prev = ckpt / "last.pt", ckpt / "prev.pt"
    assert torch.load(prev, weights_only=True)["step"] == 2
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert pretrain([*args[:-2], "train.max_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "last.pt is truncated or corrupt" in err and "prev.pt" in err
    assert torch.load(prev, weights_only=True)["step"] == 2  # the good one is untouched
    assert pretrain([*args[:-2], "train.max_steps=5", f"train.resume={prev}"]) == 0
    assert torch.load(last, weights_only=True)["step"] == 5


def test_an_existing_run_is_not_overwritten_without_resume(tiny, tmp_path, capsys):
    args = [*tiny, f"out_dir={tmp_path}", "train.max_steps=1"]
    assert pretrain(args) == 0
    assert pretrain([*args, "train.resume=never"]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


class _NanAtStep2(Objective):
    """InfoNCE that turns NaN at its third training call: a stand-in for a diverging run.

    (Each step also calls it without gradients, for the bound on the cross-view matrix.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compute(self, pos, neg):
        self.calls += torch.is_grad_enabled()
        loss = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1).mean() - pos.mean()
        if self.calls == 3:
            loss = loss * float("nan")
        return Terms(loss, -loss, math.log(neg.shape[1] + 1))


@pytest.fixture
def nan_objective():
    """Registered for one test only, so that other tests see the real registry."""
    from infoview.objectives.base import _OBJECTIVES

    register("test_nan_at_step_2")(_NanAtStep2)
    yield "test_nan_at_step_2"
    _OBJECTIVES.items.pop("test_nan_at_step_2")


def test_a_nan_loss_stops_the_run_naming_the_step_and_saving_the_batch(tiny, tmp_path, capsys, nan_objective):
    assert pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=5", f"objective.name={nan_objective}"]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "at step 2" in err
    assert "no checkpoint had been written yet" in err  # not a pointer to a checkpoint that does not exist
    dump = tmp_path / "checkpoints" / "nonfinite_step2_rank0.pt"
    state = torch.load(dump, weights_only=True)
    assert state["images"].shape == (16, 3, 32, 32) and state["images"].dtype == torch.uint8
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.name=infonse", "did you mean 'infonce'"),
        ("objective.alpah=0.1", "has no parameter 'alpah'"),
        ("method=simclrr", "did you mean 'simclr'"),
        ("optim.name=lamb", "unknown optimizer 'lamb'"),
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("data.batch_size=100000", "larger than"),
        ("model.arch=resnet19", "resnet"),
        ("data.num_workers=-1", "num_workers must be 0"),
        ("simclr.temperature=0", "simclr.temperature divides the scores"),
        ("augment.num_views=1", "augment.num_views must be at least 2"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=1", "objective.name=ml_cpc", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing half-written: no config.yaml, metrics.csv or tb/


@pytest.mark.parametrize(
    "override, message",
    [("moco.bn_splits=5", "multiple of 5"), ("moco.bn=shuffle", "use moco.bn=split"), ("moco.bn=ghost", "one of")],
)
def test_moco_batchnorm_settings_are_checked_before_training(tiny, tmp_path, capsys, override, message):
    assert pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=1", "method=moco", "moco.queue_size=64", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message.lower() in err.lower() and len(err.splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.csv").exists()


def test_online_monitors_refuse_a_beton_as_its_own_held_out_split(tiny, tmp_path, capsys):
    from infoview.data import open_source, write_beton
    from infoview.data.beton import ffcv_import_error

    if ffcv_import_error():
        pytest.skip(ffcv_import_error())
    for split in ("train", "test"):
        write_beton(open_source("digits", split=split), tmp_path / f"{split}.beton", write_mode="raw", num_workers=1)
    args = [*tiny, "train.max_steps=2", "train.eval_every=1", "monitor.max_images=100",
            f"data.source=beton:{tmp_path / 'train.beton'}", "data.backend=pytorch"]
    assert pretrain([*args, f"out_dir={tmp_path / 'a'}"]) == 2  # the monitors would score the training images
    err = capsys.readouterr().err
    assert "not 'test'" in err and "data.eval_split" in err and not (tmp_path / "a" / "checkpoints").exists()
    assert pretrain([*args, f"out_dir={tmp_path / 'b'}", f"data.eval_source=beton:{tmp_path / 'test.beton'}"]) == 0
    assert json.loads(capsys.readouterr().out)["online_knn_top1"] >= 0



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_between_two_steps_and_the_run_resumes_there(tiny, tmp_path, sig):
    steps = 40
    args = [*tiny, f"out_dir={tmp_path}", f"train.max_steps={steps}", "train.ckpt_every_steps=1000",
            "train.log_every=1"]
    cmd = [sys.executable, "-m", "infoview.cli", "pretrain", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "metrics.csv").exists() and len(read_metrics(tmp_path)) >= 5:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    name = signal.Signals(sig).name
    stopped = int(err.split(f"stopped by {name} at step ")[1].split()[0])
    assert 5 <= stopped < steps
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == stopped  # saved at the step it stopped, with no periodic checkpoint to fall back on
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    logged = [int(r["step"]) for r in read_metrics(tmp_path) if r["loss"]]
    assert logged == list(range(1, steps + 1))


def test_the_final_checkpoint_is_written_before_the_final_evaluation(tiny, tmp_path, monkeypatch, capsys):
    from infoview.pretrain import monitor

    def dies(self, method):
        raise RuntimeError("the evaluation was killed")

    monkeypatch.setattr(monitor.OnlineEval, "__call__", dies)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=3", "train.eval_every=1",
                  "monitor.max_images=50"])
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 3  # the work is kept


def test_resuming_with_other_training_settings_is_refused_unless_asked_and_then_both_configs_are_kept(
        tiny, tmp_path, capsys):
    args = [*tiny, f"out_dir={tmp_path}", "train.ckpt_every_steps=1"]
    assert pretrain([*args, "train.max_steps=2"]) == 0
    first = (tmp_path / "config.yaml").read_text()
    capsys.readouterr()
    # a longer run, from where it stopped: allowed
    assert pretrain([*args, "train.max_steps=3"]) == 0
    capsys.readouterr()
    # another learning rate and objective: what was trained would no longer match config.yaml
    assert pretrain([*args, "train.max_steps=4", "optim.lr=0.5", "objective.name=ring"]) == 2
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "optim.lr: 0.3 -> 0.5" in err
    assert "objective.name: infonce -> ring" in err and "train.allow_config_change=true" in err
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.3  # untouched
    assert pretrain([*args, "train.max_steps=4", "optim.lr=0.5", "train.allow_config_change=true"]) == 0
    now = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert now["optim"]["lr"] == 0.5 and now["_provenance"]["changed_on_resume"] == ["optim.lr: 0.3 -> 0.5"]
    kept = yaml.safe_load((tmp_path / "config.until_step3.yaml").read_text())
    assert kept["optim"]["lr"] == 0.3 and yaml.safe_load(first)["optim"]["lr"] == 0.3


@pytest.mark.parametrize("override, message", [
    ("objective.name=rnig", "unknown objective 'rnig'; did you mean 'ring'?"),
    ("method=simcrl", "unknown method 'simcrl'; did you mean 'simclr'?"),
])
def test_a_misspelt_name_is_named_before_the_saved_run_is_compared(tiny, tmp_path, capsys, override, message):
    # a folder that holds a run (make demo's runs/demo, say): a typo was shown as a resume-settings difference
    args = [*tiny, f"out_dir={tmp_path}", "train.max_steps=1"]
    assert pretrain(args) == 0
    capsys.readouterr()
    assert pretrain([*args, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "other settings" not in err and len(err.splitlines()) == 1, err


def test_a_corrupt_image_stops_the_run_with_its_name_or_is_skipped_and_counted(tiny, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (20, 20), (25 * i, 100, 50 if c == "a" else 200)).save(folder / c / f"{i}.png")
    (folder / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # the corrupt one
    args = [*tiny, "data.source=folder:" + str(folder), "data.batch_size=4", "train.max_steps=5"]
    assert pretrain([*args, f"out_dir={tmp_path / 'strict'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "3.png" in err and "data.skip_bad=true" in err and len(err.splitlines()) == 1
    assert pretrain([*args, f"out_dir={tmp_path / 'lenient'}", "data.skip_bad=true"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["skipped_images"] == 1
    assert "skipped unreadable image" in err and "3.png" in err


@pytest.mark.parametrize("objective", ["ml_cpc", "nwj"])  # nwj: a bound with no ceiling to draw
def test_curves_png_shows_the_run_beside_metrics_csv(tiny, tmp_path, capsys, objective):
    from PIL import Image

    assert pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=4", "train.log_every=1", "train.eval_every=1",
                     "monitor.max_images=60", f"objective.name={objective}"]) == 0
    png = tmp_path / "curves.png"
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000 and pixels.std() > 20  # four panels, not blank
    assert "could not draw" not in capsys.readouterr().err


def test_epoch_end_checkpoints_every_n_epochs_and_always_at_the_end(tiny, tmp_path, monkeypatch):
    from infoview.pretrain import checkpoint

    saved = []
    real = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda state, path, **kw: saved.append(state["step"])
                        or real(state, path, **kw))
    # digits' test split: 360 images, 22 steps of 16 an epoch; 5 epochs
    assert pretrain([*tiny, f"out_dir={tmp_path}", "data.split=test", "data.eval_split=train", "train.epochs=5",
                     "train.ckpt_every_epochs=2", "train.ckpt_every_steps=30"]) == 0
    # every 30 steps, but where an epoch's end saves; epochs 2 and 4; the end (epoch 5)
    assert saved == [30, 44, 60, 88, 90, 110]


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder_and_a_killed_runs_folder_is_reclaimed(
        tiny, tmp_path, capsys, cifar_checkpoint):
    """Two runs into one out_dir would write over each other's checkpoints and results: one run per folder."""
    import socket

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "infoview.cli", "pretrain", *tiny, f"out_dir={out}", "train.max_steps=100000",
           "train.ckpt_every_steps=0", "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (
                (out / "metrics.csv").exists() and len(read_metrics(out)) >= 1):
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # the first run is going
        assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=2"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"out_dir {out} is in use by infoview pretrain (pid {proc.pid} on host {socket.gethostname()}" in err
        assert main(["knn", f"backbone={cifar_checkpoint}", f"out_dir={out}", "data.num_workers=0",
                     "train.progress=false"]) == 2  # an evaluator too
        assert f"in use by infoview pretrain (pid {proc.pid}" in capsys.readouterr().err
        assert not (out / "knn.json").exists()
    finally:
        proc.kill()  # SIGKILL: it cannot let go of the folder itself
        proc.wait(timeout=60)
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=2"]) == 0  # reclaimed from the dead run
    assert not (out / ".infoview.lock").exists()


class _FullDisk:
    """A file on a disk with ``room`` bytes left: what a write past them meets (ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        import errno

        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_a_full_disk_while_saving_is_one_line_and_the_previous_checkpoint_is_kept(tiny, tmp_path, capsys,
                                                                                    monkeypatch):
    from infoview.training import checkpoint

    real_save, saves = torch.save, []

    def save_onto_a_disk_that_fills_up(obj, f, *args, **kwargs):  # the first checkpoint fits, the next does not
        saves.append(obj["step"])
        if len(saves) == 1:
            return real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as file:
                return real_save(obj, _FullDisk(file, 4096), *args, **kwargs)
        return real_save(obj, _FullDisk(f, 4096), *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_onto_a_disk_that_fills_up)
    out = tmp_path / "run"
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=3", "train.ckpt_every_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"infoview pretrain: error: cannot write {out / 'checkpoints' / 'last.pt'} (No space "
                                "left on device); the previous last.pt there is kept as it was"]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]  # no half-written temp


@pytest.mark.parametrize("where", ["a file", "/proc", "/proc/self"])
def test_an_out_dir_that_cannot_be_written_is_one_line_naming_it(tiny, tmp_path, capsys, where):
    """As root (CI), chmod stops nothing: a file in the folder's place, and /proc (read-only to everyone)."""
    out = {"a file": tmp_path / "file" / "run", "/proc": Path("/proc/infoview-test/run"),
           "/proc/self": Path("/proc/self")}[where]
    (tmp_path / "file").write_text("")
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"infoview pretrain: error: out_dir {out}"), err


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"),
], ids=["cuda_oom", "cpu_oom"])
def test_out_of_memory_is_one_line_naming_what_to_lower_and_leaves_no_half_started_folder(
        tiny, tmp_path, capsys, monkeypatch, error):
    from infoview.pretrain.engine import Trainer

    real_step, steps = Trainer._step, []

    def step(self, *args, **kwargs):
        steps.append(self.step)
        if self.step + 1 == fail_at:
            raise error
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_step", step)
    device = "GPU" if isinstance(error, torch.OutOfMemoryError) else "CPU"
    fail_at, out = 1, tmp_path / "runs" / "a"
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"infoview pretrain: error: out of {device} memory with data.batch_size=16 (the global batch) of "
                   "augment.num_views=2 views at augment.size=16 px; lower data.batch_size (optim.lr follows it by "
                   "optim.lr_scaling) or augment.size (data.resolution), or choose a smaller model.arch; on a GPU "
                   "train.precision=bf16 halves the activations"]
    assert not (tmp_path / "runs").exists()  # nothing for the rerun to meet
    fail_at = 3  # a run that saved a checkpoint first keeps it, and all it wrote
    assert pretrain([*tiny, f"out_dir={out}", "train.max_steps=3", "train.ckpt_every_steps=1"]) == 2
    assert "out of" in capsys.readouterr().err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert {"config.yaml", "metrics.csv", "tb"} <= {p.name for p in out.iterdir()}


def test_ctrl_c_with_its_output_piped_to_a_reader_that_is_gone_still_saves_at_the_step_it_stops(tiny, tmp_path):
    """`infoview pretrain ... 2>&1 | tee log`: Ctrl-C ends tee too, and the progress bar then writes into a closed
    pipe. The run goes on to the end of its step, saves there, and says nothing more (no one reads it)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "infoview.cli", "pretrain", *tiny, f"out_dir={out}", "train.max_steps=1000",
           "train.ckpt_every_steps=1000", "train.log_every=1", "train.progress=true"]
    read, write = os.pipe()
    proc = subprocess.Popen(cmd, stdout=write, stderr=write, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(write)
    rows = lambda: len(read_metrics(out)) if (out / "metrics.csv").exists() else 0  # noqa: E731
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and rows() < 3:
        os.read(read, 1 << 16)  # the reader (tee) is there ...
    os.close(read)  # ... and is gone
    seen = rows()
    while time.time() < deadline and proc.poll() is None and rows() < seen + 2:
        time.sleep(0.02)  # steps that write their bar into the closed pipe
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    last_row = int(read_metrics(out)[-1]["step"])
    assert last_row >= seen + 2
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == last_row


_STEP_IN_ONE_LONG_CALL = """
import hashlib, sys
from infoview.cli import main
from infoview.pretrain.engine import Trainer

real = Trainer._step

def step(self, *args, **kwargs):  # step 3 stays inside one C call (a long backward pass on a CPU)
    if self.step == 2:
        print("in the long call", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"x", b"salt", int(sys.argv[1]))
    return real(self, *args, **kwargs)

Trainer._step = step
sys.exit(main(["pretrain", *sys.argv[2:]]))
"""


def test_ctrl_c_in_a_long_step_is_answered_at_once_and_saves_after_it_or_stops_at_once_when_pressed_again(
        tiny, tmp_path):
    out = tmp_path / "run"
    args = [*tiny, f"out_dir={out}", "train.max_steps=100", "train.ckpt_every_steps=1000", "train.log_every=1"]

    def start(iterations: int) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _STEP_IN_ONE_LONG_CALL, str(iterations), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        assert proc.stdout.readline().strip() == "in the long call", proc.stderr.read()[-2000:]
        time.sleep(0.5)
        return proc

    proc = start(15_000_000)  # a few seconds
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline()  # said at once, while the call goes on
    assert "Ctrl-C: saving between two steps, then stopping" in first
    assert proc.poll() is None
    assert proc.wait(timeout=120) == 130
    said = proc.stderr.read()  # (every rank stops after the same step: the one after the step it was asked in)
    stopped = int(said.split("stopped by SIGINT at step ")[1].split()[0])
    assert stopped in (3, 4) and torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped

    (out / "checkpoints" / "last.pt").unlink()  # (so that the run starts again at step 0 and meets the call)
    proc = start(50_000_000)  # about 20 s
    asked = time.time()
    proc.send_signal(signal.SIGINT)
    assert "Ctrl-C: saving between" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130 and time.time() - asked < 8
    assert proc.stderr.read().strip().splitlines()[-1] == ("infoview pretrain: interrupted at once; not saved since "
                                                          "the last checkpoint")
    assert not (out / "checkpoints" / "last.pt").exists() and not (out / ".infoview.lock").exists()


def test_ctrl_c_from_a_terminal_reaches_the_loader_workers_too_and_the_run_still_saves(tiny, tmp_path):
    """A terminal's Ctrl-C goes to the whole process group, DataLoader workers included: still one press, also
    while a step is inside one long call (a press counted twice would stop the run at once, unsaved)."""
    out = tmp_path / "run"
    args = [*tiny, "data.num_workers=2", f"out_dir={out}", "train.max_steps=1000", "train.ckpt_every_steps=1000"]
    proc = subprocess.Popen([sys.executable, "-c", _STEP_IN_ONE_LONG_CALL, "12000000", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "in the long call", proc.stderr.read()[-2000:]
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "stopped by SIGINT at step" in err, err[-2000:]
    stopped = int(err.split("stopped by SIGINT at step ")[1].split()[0])
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped
