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
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import fit


class _Noisy(torch.utils.data.Dataset):
    """Items drawn from the global RNG when read, as a detector's flips and a segmenter's crops are."""

    def __len__(self):
        return 18

    def __getitem__(self, i):
        x = torch.full((5,), float(i)) / 18 + 0.1 * torch.randn(5)
        return x, i % 3


def _run(folder, stop_at: int | None = None, sig=signal.SIGINT, epochs: bool = False, settings=None):
    """A model with dropout on a shuffled loader, a torch.Generator of the task's own; ``stop_at``: the step
    during which the process sends itself ``sig``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    mine = torch.Generator().manual_seed(1)  # the task's own generator, e.g. the linear probe's
    loader = torch.utils.data.DataLoader(_Noisy(), batch_size=4, shuffle=True, drop_last=True)
    checkpoint = FitCheckpoint(folder, settings=settings or {"lr": 0.3}, command="test")
    checkpoint.track({"model": model}, rngs={"mine": mine})
    taken = []

    def step(batch):
        x, y = batch
        if stop_at is not None and len(taken) + (checkpoint.state or {}).get("step", 0) == stop_at:
            os.kill(os.getpid(), sig)
        taken.append(1)
        noise = torch.randn(x.shape, generator=mine) * 0.01
        return F.cross_entropy(model(x + noise), y)

    kw = dict(epochs=3, steps_per_epoch=4) if epochs else dict(steps=10)
    result = fit(step, opt, lambda e: loader, checkpoint=checkpoint, log_every=3, **kw)
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
