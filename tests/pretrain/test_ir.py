"""method=ir: instance recognition against a memory bank (its rows, its negatives, its bound, resume, DDP)."""
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

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.cli import main
from infoview.models import projector
from infoview.objectives import build
from infoview.pretrain.methods.ir import InstanceRecognition

pytestmark = pytest.mark.slow

N, B, DIM = 40, 8, 6  # bank rows, batch, embedding width of the unit tests
IR = ["method=ir", "augment.num_views=1", "ir.num_negatives=64"]


class TinyEncoder(nn.Module):
    """A linear encoder of 4 x 4 images: no BatchNorm, whose per-rank statistics would differ by design."""

    feature_dim = 12

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, 12), nn.Tanh())

    def forward(self, x):
        return self.net(x)


def make_method(objective="infonce", num_negatives=5, momentum=0.5, **kw):
    torch.manual_seed(0)
    enc = TinyEncoder()
    return InstanceRecognition(enc, projector(12, 8, DIM, num_layers=1), build(objective, **kw), num_samples=N,
                               temperature=0.5, num_negatives=num_negatives, bank_momentum=momentum, seed=3)


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, 4, 4, generator=gen)], torch.randperm(N, generator=gen)[:B]


def test_the_batch_rows_move_towards_its_embeddings_and_no_other_row_changes():
    method = make_method(momentum=0.5)
    views, idx = batch()
    before = method.bank.bank.clone()
    method(views, None, idx)
    q = F.normalize(method.projector(method.encoder(views[0])).detach(), dim=1)
    want = F.normalize(0.5 * before[idx] + 0.5 * q, dim=1)
    torch.testing.assert_close(method.bank.bank[idx], want)
    others = torch.ones(N, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(method.bank.bank[others], before[others])
    replaced = make_method(momentum=0.0)  # m = 0: the row is the new embedding
    replaced(views, None, idx)
    torch.testing.assert_close(replaced.bank.bank[idx], q)


@pytest.mark.parametrize("k", [5, 0])
def test_negatives_never_include_a_rows_own_image(k):
    method = make_method(num_negatives=k)
    seen = {}
    real = method._objective

    def recording(pos, neg, kk=None):
        seen.update(pos=pos.detach(), neg=neg.detach(), k=kk)
        return real(pos, neg, kk)

    method._objective = recording
    views, idx = batch()
    bank = method.bank.bank.clone()
    torch.manual_seed(7)
    out = method(views, None, idx)
    q = F.normalize(method.projector(method.encoder(views[0])).detach(), dim=1)
    scores = q @ bank.T / 0.5
    torch.testing.assert_close(seen["pos"], scores[torch.arange(B), idx])
    if k == 0:  # the whole bank: every other row once, the own row masked out
        assert seen["k"] == N - 1 and seen["neg"].shape == (B, N)
        assert torch.isinf(seen["neg"][torch.arange(B), idx]).all()
        own = F.one_hot(idx, N).bool()
        torch.testing.assert_close(seen["neg"][~own], scores[~own])
        assert out.mi_estimate.item() == pytest.approx(out.mi.item(), abs=1e-4)  # the same N candidates
    else:  # each of the K draws is the score of another image's row
        assert seen["neg"].shape == (B, k)
        torch.manual_seed(7)
        drawn = method.bank.sample(idx, k)
        assert not (drawn == idx[:, None]).any()
        torch.testing.assert_close(seen["neg"], scores.gather(1, drawn))
    many = method.bank.sample(idx.repeat(50), N - 1)  # 400 rows of 39 draws: never the own row
    assert not (many == idx.repeat(50)[:, None]).any() and set(many.flatten().tolist()) == set(range(N))


def pretrain(args):
    return main(["pretrain", *args])


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls_and_mi_is_the_bank_bound_below_log_n(tiny, tmp_path, capsys):
    """The 360 test digits as the training split: 11 steps an epoch, so 33 steps see every image three times."""
    out = tmp_path / "run"
    assert pretrain([*tiny, *IR, f"out_dir={out}", "data.split=test", "data.batch_size=32", "ir.bank_momentum=0",
                     "train.max_steps=33", "train.log_every=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    # every view against the rows its epoch has not visited: 40 at an epoch's last step (10 steps of 32 before)
    assert result["mi_ceiling"] == pytest.approx(math.log(40))
    assert result["mi"] <= result["mi_ceiling"] and result["mi"] != result["mi_estimate"]
    rows = read_metrics(out)
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    mi = [float(r["mi"]) for r in rows if r["loss"]]
    est = [float(r["mi_estimate"]) for r in rows if r["loss"]]
    ceilings = [math.log(360 - 32 * (step % 11)) for step in range(33)]
    assert [float(r["mi_ceiling"]) for r in rows if r["loss"]] == pytest.approx(ceilings)
    assert len(loss) == 33 and all(m <= c for m, c in zip(mi, ceilings)) and mi != est
    first, third = sum(loss[:11]) / 11, sum(loss[22:]) / 11  # the first epoch and the third
    assert third < first - 2, loss
    assert sum(mi[22:]) / 11 > sum(mi[:11]) / 11 + 2, mi


@pytest.mark.parametrize("objective, extra", [
    ("infonce", []), ("ml_cpc", ["objective.alpha=0.5"]),
    ("ring", ["ir.num_negatives=0", "objective.outer=0.5", "objective.inner=0.1", "objective.anneal_epochs=0.01"]),
])
def test_trains_with_any_objective(tiny, tmp_path, capsys, objective, extra):
    assert pretrain([*tiny, *IR, f"out_dir={tmp_path}", "train.max_steps=2", f"objective.name={objective}",
                     *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mi_ceiling"] == pytest.approx(math.log(1437 - 16))  # the split less the first step's 16
    assert math.isfinite(result["loss"]) and result["mi"] <= result["mi_ceiling"]
    bank = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]["bank.bank"]
    assert bank.shape == (1437, 16)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(1437))


@pytest.mark.parametrize("override, message", [
    ("ir.num_negatives=1437", "ir.num_negatives=1024 or fewer (drawn from the split's 1,436 other images; got 1437"),
    ("ir.num_negatives=-1", "ir.num_negatives"),
    ("ir.bank_momentum=1", "ir.bank_momentum"),
    ("ir.temperature=0", "ir.temperature"),
    ("augment.num_views=2", "method=ir takes augment.num_views=1"),
    ("moco.pred_hidden=8", "moco.pred_hidden=8 configures method=moco"),
])
def test_bad_settings_are_one_line_errors(tiny, tmp_path, capsys, override, message):
    args = [*tiny, *IR, f"out_dir={tmp_path / 'run'}", "train.max_steps=1", override]
    assert pretrain(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_ir_keys_under_another_method_are_an_error(tiny, tmp_path, capsys):
    assert pretrain([*tiny, f"out_dir={tmp_path}", "train.max_steps=1", "ir.num_negatives=8"]) == 2
    assert "configures method=ir" in capsys.readouterr().err


def test_killed_and_resumed_run_ends_with_the_same_weights_and_bank(tiny, tmp_path):
    """Mirrors test_pretrain_engine's: SIGKILL mid-way, resume; the bank and the draws' RNG are in the state."""
    steps = 10
    args = [*tiny, *IR, "data.split=test", f"train.max_steps={steps}", "train.ckpt_every_steps=1",
            "train.log_every=1"]
    cmd = [sys.executable, "-m", "infoview.cli", "pretrain", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "uninterrupted"
    subprocess.run([*cmd, f"out_dir={ref}"], check=True, capture_output=True, env=env, timeout=300)

    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"out_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    last, killed_at, deadline = out / "checkpoints" / "last.pt", None, time.time() + 200
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
    assert killed_at is not None and killed_at < steps, proc.stderr.read().decode()[-2000:]
    resumed = subprocess.run([*cmd, f"out_dir={out}"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(p / "checkpoints" / "last.pt", weights_only=True)["model"] for p in (ref, out))
    assert a.keys() == b.keys() and "bank.bank" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [int(r["step"]) for r in read_metrics(out) if r["loss"]] == list(range(1, steps + 1))


# -- DDP: two gloo ranks against one process on the whole batch ------------------------------------------------

WORLD = 2
CASES = {"sampled": ("infonce", 5, {}), "whole": ("infonce", 0, {}), "ml_cpc": ("ml_cpc", 5, {"alpha": 0.5}),
         "ring": ("ring", 0, {"outer": 0.5, "inner": 0.1})}


def _grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def _run(name: str, views, idx, ddp: bool):
    objective, k, kw = CASES[name]
    method = make_method(objective, num_negatives=k, **kw)
    model = torch.nn.parallel.DistributedDataParallel(method) if ddp else method
    torch.manual_seed(11)  # the engine seeds every rank alike: the draws of the global batch agree
    out = model(views, None, idx)
    out.loss.backward()
    return method, out


def _on_rank(rank: int) -> dict:
    views, idx = batch()
    b = B // WORLD
    mine = slice(rank * b, (rank + 1) * b)
    results = {}
    for name in CASES:
        method, out = _run(name, [views[0][mine]], idx[mine], ddp=True)
        results[name] = [_grads(method), method.bank.bank.clone(), out.mi.item(), out.mi_estimate.item(),
                         method.visits.visited.clone()]
    return results


def test_two_ranks_give_the_single_process_gradient_and_identical_banks(gloo_ranks):
    ranks = gloo_ranks(_on_rank, world=WORLD)
    views, idx = batch()
    for name in CASES:
        method, out = _run(name, views, idx, ddp=False)
        ref = _grads(method)
        for r in range(WORLD):
            grads, bank, mi, estimate, visited = ranks[r][name]
            # every rank knows the whole global batch visited: the next step's bound leaves all of it out
            assert torch.equal(visited, method.visits.visited) and int(visited.sum()) == B, name
            assert grads.keys() == ref.keys()
            for key, g in ref.items():
                torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
            assert torch.equal(bank, ranks[0][name][1]), name  # every rank's bank is the same
            torch.testing.assert_close(bank, method.bank.bank, msg=name)  # and the single process's
        # the engine averages the ranks' figures: the mean of the halves' bounds is the whole batch's
        mi = sum(ranks[r][name][2] for r in range(WORLD)) / WORLD
        assert mi == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6), name
        if name == "ml_cpc":  # pooled: the global value on each rank
            assert ranks[0][name][3] == pytest.approx(out.mi_estimate.item(), rel=1e-5, abs=1e-6)
