"""The shared fit loop (training/loop.py): the same weights as a loop written by hand, its checks, schedule and rows."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import InfoviewError
from infoview.training.loop import FitResult, NonFiniteLoss, fit, optimizer_step
from infoview.training.metrics import MetricsLog
from infoview.training.optim import poly_factor, set_lr, warmup_decay_factors


def _data(n: int = 20, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return model, opt


def _schedule(step: int) -> tuple[float, float]:
    return warmup_decay_factors(step, 13, 3, "step", [0.5])


def test_a_tiny_model_gets_exactly_the_weights_of_a_loop_written_by_hand():
    batches = _data()  # 5 batches an epoch; 13 steps end in the middle of the third epoch
    model, opt = _model_and_optimizer()
    result = fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, batches, steps=13, schedule=_schedule,
                 clip_grad=0.3)

    ref, ref_opt = _model_and_optimizer()
    losses, step = [], 0
    while step < 13:
        for x, y in batches:
            set_lr(ref_opt, *_schedule(step))
            loss = F.cross_entropy(ref(x), y)
            losses.append(float(loss.detach()))
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.3)
            ref_opt.step()
            step += 1
            if step == 13:
                break

    assert result.steps == 13 and result.losses == losses and result.final_loss == losses[-1]
    for (name, got), want in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(got, want), name
    assert result.rows == [] and result.seconds > 0


def test_epochs_call_the_batch_function_once_per_epoch():
    model, opt = _model_and_optimizer()
    epochs = []

    def batches(epoch):
        epochs.append(epoch)
        return _data(seed=epoch)

    result = fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, batches, epochs=3)
    assert epochs == [0, 1, 2] and result.steps == 15
    with pytest.raises(InfoviewError, match="probe: epoch 0 gave no batch"):
        fit(lambda b: b.sum(), opt, [], epochs=1, desc="probe")
    with pytest.raises(ValueError, match="steps or epochs"):
        fit(lambda b: b.sum(), opt, [])


def test_a_non_finite_loss_stops_with_one_line_naming_the_step():
    model, opt = _model_and_optimizer()
    calls = []

    def step(batch):
        calls.append(1)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        bad = loss * math.inf if len(calls) == 4 else loss
        return bad, {"ce": loss, "bad": bad}

    with pytest.raises(NonFiniteLoss) as info:
        fit(step, opt, _data(), steps=10, desc="segment train", hint="lower optim.lr")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, InfoviewError)
    assert message.startswith("segment train: the loss is inf at step 3 (lr 0.5, ce ")
    assert "bad inf" in message and message.endswith("; lower optim.lr")

    ref, ref_opt = _model_and_optimizer()  # it stopped before that step's backward: the weights of 3 steps
    fit(lambda b: F.cross_entropy(ref(b[0]), b[1]), ref_opt, _data(), steps=3)
    assert len(calls) == 4 and all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_the_schedule_is_applied_at_every_step():
    model, _ = _model_and_optimizer()
    # groups without a base_lr take their lr when the loop starts as their peak
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2}, {"params": model[2].parameters()}], lr=0.5)
    seen = []

    def step(batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return F.cross_entropy(model(batch[0]), batch[1])

    fit(step, opt, _data(), steps=12, schedule=lambda s: poly_factor(s, 12), log_every=1, on_log=lambda r: None)
    assert seen == [[0.2 * poly_factor(s, 12), 0.5 * poly_factor(s, 12)] for s in range(12)]

    model, opt = _model_and_optimizer()
    fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, _data(), steps=3)  # no schedule: the lr as it is
    assert [g["lr"] for g in opt.param_groups] == [0.5]


def test_rows_every_n_steps_and_after_the_last_go_to_the_callback(tmp_path):
    model, opt = _model_and_optimizer()
    got = []

    def step(batch):
        ce = F.cross_entropy(model(batch[0]), batch[1])
        return ce + 0.0 * model[0].weight.sum(), {"ce": ce}

    result = fit(step, opt, _data(), steps=7, log_every=3, on_log=got.append, steps_per_epoch=5,
                 schedule=lambda s: 1.0 - s / 10)
    assert [r["step"] for r in got] == [3, 6, 7] and got == result.rows
    assert list(got[0]) == ["step", "epoch", "lr", "loss", "ce"]
    assert [r["epoch"] for r in got] == [0.6, 1.2, 1.4]
    assert [r["lr"] for r in got] == [0.5 * (1.0 - s / 10) for s in (2, 5, 6)]
    assert [r["loss"] for r in got] == [result.losses[s] for s in (2, 5, 6)]

    model, opt = _model_and_optimizer()
    log = MetricsLog(tmp_path, ["step", "lr", "loss"], tensorboard=False)
    halved = fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, _data(), steps=4, log_every=2, on_log=log,
                 reduce=lambda t: t / 2)  # what detection's all_reduce_mean does over the processes
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4"] and float(rows[1]["loss"]) == pytest.approx(halved.losses[3], rel=1e-5)
    with torch.no_grad():
        (x, y), fresh = _data()[0], _model_and_optimizer()[0]
        assert halved.losses[0] == float(F.cross_entropy(fresh(x), y)) / 2


def test_bf16_autocast_wraps_the_step():
    model, opt = _model_and_optimizer()
    dtypes = []

    def step(batch):
        logits = model(batch[0])
        dtypes.append(logits.dtype)
        return F.cross_entropy(logits.float(), batch[1])

    fit(step, opt, _data(), steps=2, amp_dtype=torch.bfloat16)
    fit(step, opt, _data(), steps=1)
    assert dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]


def test_optimizer_step_clips_the_parameters_given():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    optimizer_step(opt, (w * torch.tensor([3.0, 4.0])).sum(), clip_grad=1.0)  # gradient (3, 4), norm 5
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))
    assert FitResult().final_loss != FitResult().final_loss  # nan before any step
