"""Exact resume of the shared fit loop (training/fit_state.py): a run stopped by a signal and run again ends with
the weights, losses and rows of a run never stopped; a checkpoint of other settings is refused in one line."""
from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import InfoviewError, Interrupted
from infoview.training.components import SkippingSampler, dataloader_epochs
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import fit


class _Noisy(torch.utils.data.Dataset):
    """Items drawn from the global RNG when read, as a detector's flips and a segmenter's crops are."""

    reads = 0

    def __len__(self):
        return 18

    def __getitem__(self, i):
        _Noisy.reads += 1
        x = torch.full((5,), float(i)) / 18 + 0.1 * torch.randn(5)
        return x, i % 3


def _run(folder, stop_at: int | None = None, sig=signal.SIGINT, epochs: bool = False, settings=None,
         skipping: bool = False, saves=None, die_at: int | None = None):
    """A model with dropout on a shuffled loader, a torch.Generator of the task's own; ``stop_at``: the step
    during which the process sends itself ``sig``; ``skipping``: the loader's epochs start at any batch
    (``training.components.dataloader_epochs``), else they are read from their start; ``saves``: fit's;
    ``die_at``: the step during which the process dies with no time to save."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    mine = torch.Generator().manual_seed(1)  # the task's own generator, e.g. the linear probe's
    if skipping:
        order = SkippingSampler(torch.utils.data.RandomSampler(_Noisy()))
        batches = dataloader_epochs(torch.utils.data.DataLoader(_Noisy(), batch_size=4, sampler=order, drop_last=True))
    else:
        loader = torch.utils.data.DataLoader(_Noisy(), batch_size=4, shuffle=True, drop_last=True)
        batches = lambda e: loader  # noqa: E731
    checkpoint = FitCheckpoint(folder, settings=settings or {"lr": 0.3}, command="test")
    checkpoint.track({"model": model}, rngs={"mine": mine})
    taken = []

    def step(batch):
        x, y = batch
        if stop_at is not None and len(taken) + (checkpoint.state or {}).get("step", 0) == stop_at:
            os.kill(os.getpid(), sig)
        if die_at is not None and len(taken) + (checkpoint.state or {}).get("step", 0) == die_at:
            raise SystemExit("killed")
        taken.append(1)
        noise = torch.randn(x.shape, generator=mine) * 0.01
        return F.cross_entropy(model(x + noise), y)

    kw = dict(epochs=3, steps_per_epoch=4) if epochs else dict(steps=10)
    result = fit(step, opt, batches, checkpoint=checkpoint, log_every=3, saves=saves, **kw)
    return model, result, checkpoint


@pytest.mark.parametrize("sig, at, epochs", [(signal.SIGINT, 5, False), (signal.SIGTERM, 3, False),
                                             (signal.SIGINT, 6, True)])
def test_a_run_stopped_by_a_signal_and_run_again_ends_exactly_as_a_run_never_stopped(tmp_path, sig, at, epochs):
    whole, expected, done = _run(tmp_path / "whole", epochs=epochs)
    assert (tmp_path / "whole" / "last.pt").is_file()  # the last step's state, before the task scores it
    done.remove()
    assert not (tmp_path / "whole").exists()

    with pytest.raises(Interrupted, match=rf"stopped by {signal.Signals(sig).name} at step {at + 1} of "
                                          rf"{expected.steps}; saved .*last.pt. Run the same command again"):
        _run(tmp_path / "cut", stop_at=at, sig=sig, epochs=epochs)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == at + 1
    resumed, result, _ = _run(tmp_path / "cut", epochs=epochs)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert result.losses == expected.losses and result.rows == expected.rows and result.steps == expected.steps


@pytest.mark.parametrize("at, epochs", [(5, False), (6, True)])  # (mid-epoch: 4 steps an epoch)
def test_a_resumed_run_on_epochs_that_start_anywhere_reads_only_what_it_trains_on_and_ends_exactly(
        tmp_path, at, epochs):
    whole, expected, _ = _run(tmp_path / "whole", epochs=epochs, skipping=True)
    with pytest.raises(Interrupted):
        _run(tmp_path / "cut", stop_at=at, epochs=epochs, skipping=True)
    _Noisy.reads = 0
    resumed, result, _ = _run(tmp_path / "cut", epochs=epochs, skipping=True)
    assert _Noisy.reads == 4 * (expected.steps - at - 1)  # not the batches of the epoch it had trained on
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert result.losses == expected.losses and result.rows == expected.rows

    _run(tmp_path / "plain", epochs=epochs)  # a plain iterable's epoch is read from its start again
    with pytest.raises(Interrupted):
        _run(tmp_path / "plain_cut", stop_at=at, epochs=epochs)
    _Noisy.reads = 0
    _run(tmp_path / "plain_cut", epochs=epochs)
    assert _Noisy.reads == 4 * (expected.steps - at - 1) + 4 * ((at + 1) % 4)


def test_a_checkpoint_of_other_settings_is_refused_naming_them(tmp_path):
    with pytest.raises(Interrupted):
        _run(tmp_path, stop_at=2)
    with pytest.raises(InfoviewError, match=r"last.pt holds an unfinished run with other settings \(lr: 0.3 -> "
                                            r"0.1\).*or choose another out_dir; remove .* to start afresh"):
        _run(tmp_path, settings={"lr": 0.1})
    _run(tmp_path, settings={"lr": 0.3, "train": {"progress": True}})  # how it runs may change


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InfoviewError, match=r"last.pt is truncated or corrupt.*remove .* to start afresh"):
        _run(tmp_path)


_RANK = """
import hashlib, os, signal, sys
import torch, torch.nn.functional as F
from torch import nn
from infoview.errors import Interrupted
from infoview.training import distributed as D
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import fit

folder, stop_at = sys.argv[1], int(sys.argv[2])
info, device = D.setup("cpu")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
net = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
data = torch.randn(64, 5, generator=torch.Generator().manual_seed(info.rank))
checkpoint = FitCheckpoint(folder, settings={"lr": 0.3}, command="test").track({"model": model})
taken = []

def step(i):
    if info.rank == 1 and len(taken) + (checkpoint.state or {}).get("step", 0) == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)  # one process asked: both stop after the same step
    taken.append(1)
    x = data[i * 4:(i + 1) * 4] + 0.1 * torch.randn(4, 5)
    return F.cross_entropy(net(x), torch.arange(4) % 3)

try:
    fit(step, opt, lambda e: range(16), steps=12, reduce=D.all_reduce_mean, checkpoint=checkpoint)
except Interrupted as exc:
    print("stopped:", exc, flush=True)
else:
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    print("done", digest, flush=True)
D.teardown()
"""


def _ddp(folder, stop_at: int, port: int) -> list[str]:
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(folder), str(stop_at)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [o[0].strip() for o in outs]


@pytest.mark.slow
def test_under_ddp_one_process_asked_to_stop_stops_every_one_after_the_same_step_and_the_run_resumes(tmp_path):
    import random

    port = random.randint(20000, 40000)
    whole = _ddp(tmp_path / "whole", -1, port)
    assert whole[0].startswith("done") and whole[0] == whole[1]
    cut = _ddp(tmp_path / "cut", 4, port + 1)
    assert all(o.startswith("stopped: stopped by ") and "at step 5 of 12" in o for o in cut), cut
    assert "SIGTERM" in cut[1] and "another process" in cut[0]
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 5
    assert _ddp(tmp_path / "cut", -1, port + 2) == whole


@pytest.mark.parametrize("at, epochs", [(5, False), (3, True)])  # (3, True): the step that ends the first epoch
def test_a_preemption_hook_saves_after_the_step_in_progress_and_the_run_goes_on_exactly(tmp_path, at, epochs):
    from infoview.training.fit_state import current_fit

    whole, expected, _ = _run(tmp_path / "whole", epochs=epochs)
    seen = []

    def submitits(signum, frame):  # a SLURM job's handler (submitit's): the command's hook, then the job ends
        seen.append(current_fit().step)
        current_fit().save_now()
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitits)
    try:
        with pytest.raises(SystemExit):
            _run(tmp_path / "cut", stop_at=at, sig=signal.SIGUSR2, epochs=epochs)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [at + 1] and current_fit() is None  # held until the step ended; cleared once fit is left
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == at + 1
    resumed, result, _ = _run(tmp_path / "cut", epochs=epochs)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert result.losses == expected.losses and result.rows == expected.rows and result.steps == expected.steps


def test_a_non_finite_loss_saves_the_model_optimizer_and_batch_of_its_step_and_names_the_file(tmp_path):
    from infoview.training.loop import NonFiniteLoss

    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    batches = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(6)]
    checkpoint = FitCheckpoint(tmp_path / "ckpt", settings={"lr": 0.3}, command="test").track({"model": model})
    seen = []

    def step(batch):
        seen.append(batch)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        return loss * float("nan") if len(seen) == 4 else loss

    with pytest.raises(NonFiniteLoss) as info:
        fit(step, opt, batches, steps=6, checkpoint=checkpoint)
    path = tmp_path / "ckpt" / "nonfinite_step3_rank0.pt"
    assert f"at step 3 (lr 0.3); the model, the optimizer and the batch are saved in {path}" in str(info.value)
    dump = torch.load(path, weights_only=True)
    assert dump["step"] == 3 and all(torch.equal(a, b) for a, b in zip(dump["batch"], seen[3]))
    assert all(torch.equal(dump["modules"]["model"][k], v) for k, v in model.state_dict().items())  # before it
    replay = nn.Linear(5, 3)
    replay.load_state_dict(dump["modules"]["model"])
    assert torch.isfinite(F.cross_entropy(replay(dump["batch"][0]), dump["batch"][1]))  # what the step computed on


def test_periodic_saves_leave_a_way_back_in_after_a_kill_that_gave_no_time_to_save(tmp_path, monkeypatch):
    from infoview.training.loop import Saves

    whole, expected, _ = _run(tmp_path / "whole")
    real, saved = FitCheckpoint.save, []
    monkeypatch.setattr(FitCheckpoint, "save", lambda self, opt, at, *a, **k: saved.append(at.step)
                        or real(self, opt, at, *a, **k))
    with pytest.raises(SystemExit):  # the process dies inside step 8: nothing is saved then
        _run(tmp_path / "cut", saves=Saves(every_steps=3), die_at=7)
    assert saved == [3, 6]  # every 3 steps
    resumed, result, _ = _run(tmp_path / "cut", saves=Saves(every_steps=3))
    assert saved[2:] == [9, 10]  # from step 6 on; and after its last step
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert result.losses == expected.losses and result.rows == expected.rows


def test_a_preemption_signal_during_an_evaluation_at_an_epochs_end_is_handled_at_once_and_the_run_was_saved_first(
        tmp_path):
    from infoview.training.components import Component
    from infoview.training.fit_state import current_fit

    events = []

    class Evaluation(Component):  # an online evaluation that outlasts SLURM's notice
        def wants_epoch_end(self, at, final):
            return not final

        def epoch_end(self, at, final):
            os.kill(os.getpid(), signal.SIGUSR2)
            events.append(("evaluated", at.step))

    def submitits(signum, frame):
        events.append(("hook", current_fit().step, torch.load(tmp_path / "last.pt", weights_only=True)["step"]))

    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(3)]
    checkpoint = FitCheckpoint(tmp_path, settings={}, command="test").track({"model": model})
    previous = signal.signal(signal.SIGUSR2, submitits)
    try:
        fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, batches, epochs=2, steps_per_epoch=3,
            checkpoint=checkpoint, components=[Evaluation()])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    # saved before the evaluation; the hook ran inside it, not after the next step
    assert events == [("hook", 3, 3), ("evaluated", 3)]
