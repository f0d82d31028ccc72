"""The fit loop the evaluators share: batches, learning rate, forward, backward, step, checks, progress, rows.

Detection, segmentation and the linear probe train the same way; only what a
step computes differs. ``fit`` runs the common part and takes the task's part
as a function, ``step_fn(batch) -> loss`` (or ``(loss, terms)``, a dict of
named scalar tensors the loss is made of). For every step it

1. sets the learning rate: ``set_lr(optimizer, *schedule(step))``, the
   schedule giving one factor or a tuple of factors of each group's
   ``base_lr`` (``training.optim``'s schedules are such functions of the step);
2. runs ``step_fn`` on the next batch, under autocast when ``amp_dtype`` is
   given (bf16; the device is the parameters');
3. checks the loss (averaged over the processes by ``reduce`` first, so every
   process stops at the same step): a loss that is not finite stops the run
   with :class:`NonFiniteLoss`, one line that names the step, the learning
   rate, the terms and what to change (``hint``);
4. ``zero_grad``, ``backward``, clips the gradients' global norm to
   ``clip_grad`` when it is positive, and steps the optimizer
   (:func:`optimizer_step`);
5. updates the progress bar (tqdm: the loss and lr) and, every ``log_every``
   steps and after the last one, makes a row ``{"step", "epoch" (when
   ``steps_per_epoch`` is given), "lr", "loss", *terms}`` (terms averaged by
   ``reduce``) that it keeps and hands to ``on_log``: a function or a
   ``training.metrics.MetricsLog``.

The batches: ``batches`` is an iterable that is iterated again for every
epoch (a DataLoader), or a function of the epoch that returns that epoch's
batches (to call ``sampler.set_epoch`` first, or to draw a new order). The
run stops after ``steps`` steps, in the middle of an epoch if need be, or after
``epochs`` whole passes; with both, at whichever comes first. An epoch
without a single batch is an error (the run would never end).

Steps are counted as pretraining counts them: the step a message names is the
number of steps taken before it (the first is step 0), and a row's ``step`` is
the number of steps taken when it is written (the first row of
``log_every=1`` is step 1).

Given a ``checkpoint`` (``training.fit_state.FitCheckpoint``), the run goes
on from the step it holds; Ctrl-C or SIGTERM (``training.signals.stop_requests``)
saves after the step in progress and stops with ``Interrupted``, one line
saying how to go on (the request is reduced with the step's loss, so every
process stops after the same step); and the run saves after its last step,
before the task scores it. ``training.fit_state`` says what is saved. While
such a run goes on, ``training.fit_state.current_fit()`` reaches it (a
pre-emption hook saves it), and the handlers of SIGUSR2/SIGTERM that someone
else installed (SLURM's, through submitit) run between two steps only
(``training.signals.held_between_steps``).

What is not here stays with the task: building the model, its loss, the data,
``model.train()``, evaluation and the report. Pretraining keeps a loop of its
own (``pretrain/engine.py``: checkpoints, resume, signals, DDP's collective
statistics); the MI benchmark uses only :func:`progress_bar` and
:func:`optimizer_step` (``mi_bench/critics.py`` says why).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from infoview.errors import InfoviewError, Interrupted
from infoview.training.distributed import is_distributed
from infoview.training.fit_state import FitCheckpoint, Position, Restored, RunningFit, running
from infoview.training.metrics import MetricsLog
from infoview.training.optim import set_lr
from infoview.training.signals import stop_requests

#: what a step function returns: the loss, or the loss and the named terms it is made of
StepOutput = Union[Tensor, tuple[Tensor, dict[str, Tensor]]]
#: the factor (or factors, multiplied in order) of every group's base_lr at a step
Schedule = Callable[[int], Union[float, tuple[float, ...]]]


class NonFiniteLoss(InfoviewError):
    """The loss of a step is nan or infinite; the message names the step, the lr, the terms and what to change."""


@dataclass
class FitResult:
    """What :func:`fit` leaves: steps taken, every step's loss (reduced), the rows logged, the seconds it took."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """The last step's loss; nan when no step was taken."""
        return self.losses[-1] if self.losses else float("nan")


def progress_bar(total: int | None, desc: str, progress: bool = True, initial: int = 0) -> tqdm:
    """The bar every loop shows on stderr: one tick a step, redrawn at most twice a second."""
    return tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True, mininterval=0.5,
                initial=initial)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor, clip_grad: float = 0.0,
                   clip_params: Sequence[Tensor] | None = None) -> None:
    """``zero_grad``, ``backward``, the gradients' global norm clipped to ``clip_grad`` (when > 0), ``step``.

    ``clip_params``: the parameters whose norm is clipped, in the order given
    (the order of the sum, so of the last bits); by default the optimizer's.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        if clip_params is None:
            clip_params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(clip_params, clip_grad)
    optimizer.step()


def _batches(batches, steps: int | None, epochs: int | None, desc: str, at: Position, resume: _Resume | None):
    """Every batch of the run from ``at`` on, epoch after epoch, until ``steps`` steps or ``epochs`` passes;
    ``at`` follows the batches handed out. ``resume``: the random states of each epoch's start are read
    (for a checkpoint), and a resumed run's first epoch drops the batches it had trained on."""
    while (steps is None or at.step < steps) and (epochs is None or at.epoch < epochs):
        if resume is not None:
            resume.epoch_begins(at)
        epoch = iter(batches(at.epoch) if callable(batches) else batches)
        if resume is not None:
            resume.skip(epoch, at)
        empty = at.batch == 0
        for batch in epoch:
            empty = False
            at.batch += 1
            yield batch
            if steps is not None and at.step >= steps:
                return
        if empty:
            raise InfoviewError(f"{desc}: epoch {at.epoch} gave no batch to train on")
        at.epoch, at.batch = at.epoch + 1, 0


class _Resume:
    """``fit``'s side of a :class:`FitCheckpoint`: the epoch's random states, and a resumed run's way back in."""

    def __init__(self, checkpoint: FitCheckpoint, restored: Restored | None):
        self.checkpoint, self.restored = checkpoint, restored
        self.epoch_rng = restored.epoch_rng if restored is not None else None

    def epoch_begins(self, at: Position) -> None:
        if self.restored is None:
            self.epoch_rng = self.checkpoint.rng()
        else:  # the resumed epoch begins as it did, from the states it began with
            self.epoch_rng = self.restored.epoch_rng
            self.checkpoint.set_rng(self.epoch_rng)

    def skip(self, epoch, at: Position) -> None:
        """A resumed run: the epoch's first ``at.batch`` batches read again (not trained on), then the random
        states of the step it stopped after."""
        if self.restored is None:
            return
        for _ in range(at.batch):
            next(epoch, None)
        self.checkpoint.set_rng(self.restored.rng)
        self.restored = None


def _set_lr(optimizer: torch.optim.Optimizer, schedule: Schedule | None, step: int) -> float:
    """The schedule's lr for ``step`` set on every group (or the lr as it is, without one); the first group's."""
    if schedule is None:
        return optimizer.param_groups[0]["lr"]
    factors = schedule(step)
    return set_lr(optimizer, *factors) if isinstance(factors, tuple) else set_lr(optimizer, factors)


def _nonfinite(desc: str, value: float, step: int, lr: float, terms: dict[str, Tensor], hint: str) -> NonFiniteLoss:
    parts = "".join(f", {k} {float(v.detach()):.3g}" for k, v in terms.items())
    return NonFiniteLoss(f"{desc}: the loss is {value} at step {step} (lr {lr:.3g}{parts}); {hint}")


class _Rows:
    """The rows of a run (``fit`` says when), kept and handed to ``on_log``."""

    def __init__(self, on_log, steps_per_epoch: int | None, reduce: Callable[[Tensor], Tensor]):
        self.on_log, self.steps_per_epoch, self.reduce = on_log, steps_per_epoch, reduce
        self.rows: list[dict] = []

    def write(self, done: int, lr: float, loss: float, terms: dict[str, Tensor]) -> None:
        row: dict[str, Any] = {"step": done}
        if self.steps_per_epoch:
            row["epoch"] = round(done / self.steps_per_epoch, 4)
        row.update(lr=lr, loss=loss)
        row.update({k: float(self.reduce(v.detach())) for k, v in terms.items()})
        self.rows.append(row)
        if isinstance(self.on_log, MetricsLog):
            self.on_log.write(row)
        elif self.on_log is not None:
            self.on_log(row)


def _loss_and_stop(reduce, loss: Tensor, stop: dict | None) -> tuple[float, bool]:
    """The loss over the processes and whether any was asked to stop, in the one reduction a step makes."""
    if stop is None:
        return float(reduce(loss.detach())), False
    if not is_distributed():  # (this process's request is every process's)
        return float(reduce(loss.detach())), stop["signal"] is not None
    both = reduce(torch.stack([loss.detach(), loss.detach().new_tensor(float(stop["signal"] is not None))]))
    value, asked = both.tolist()
    return value, asked > 0


def fit(
    step_fn: Callable[[Any], StepOutput],
    optimizer: torch.optim.Optimizer,
    batches: Iterable | Callable[[int], Iterable],
    *,
    steps: int | None = None,
    epochs: int | None = None,
    schedule: Schedule | None = None,
    clip_grad: float = 0.0,
    clip_params: Sequence[Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    log_every: int = 0,
    on_log: Callable[[dict], object] | MetricsLog | None = None,
    steps_per_epoch: int | None = None,
    progress: bool = False,
    desc: str = "train",
    hint: str = "lower the learning rate",
    checkpoint: FitCheckpoint | None = None,
) -> FitResult:
    """Train through ``step_fn`` for ``steps`` steps or ``epochs`` epochs of ``batches``; see the module docstring.

    ``schedule(step)`` gives the lr factor(s) of each group's ``base_lr`` (a
    group without one takes its lr when the loop starts); without a schedule
    the lr stays as it is. ``reduce`` averages a value over the processes
    (``training.distributed.all_reduce_mean``); ``steps_per_epoch`` gives the
    rows an ``epoch`` column and the bar its length in ``epochs`` mode.
    ``log_every=0``: no rows. ``desc`` names the loop in the bar and in errors.
    ``checkpoint``: the run goes on from what it holds, saves there when
    Ctrl-C or SIGTERM stops it (then raises ``Interrupted``) and after its
    last step (``training.fit_state``); a pre-emption hook reaches it
    meanwhile (``training.fit_state.current_fit``).
    """
    if steps is None and epochs is None:
        raise ValueError("fit: give steps or epochs")
    if schedule is not None:
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
    reduce = reduce or (lambda t: t)
    autocast = contextlib.nullcontext()
    if amp_dtype is not None:  # on the device of the parameters
        autocast = torch.autocast(optimizer.param_groups[0]["params"][0].device.type, dtype=amp_dtype)
    rows = _Rows(on_log, steps_per_epoch, reduce)
    done = FitResult(rows=rows.rows)
    at, resume = _restore(checkpoint, optimizer, done)
    total = steps if steps is not None else epochs * steps_per_epoch if steps_per_epoch else None
    bar = progress_bar(total, desc, progress, initial=at.step)
    start, took = time.perf_counter(), False
    try:
        run = RunningFit(checkpoint, optimizer, at, done.losses, rows.rows, resume) if checkpoint is not None else None
        with running(run) as held, stop_requests() if checkpoint is not None else contextlib.nullcontext() as stop:
            for batch in _batches(batches, steps, epochs, desc, at, resume):
                step = at.step
                lr = _set_lr(optimizer, schedule, step)
                with autocast:
                    out = step_fn(batch)
                loss, terms = out if isinstance(out, tuple) else (out, {})
                value, stopping = _loss_and_stop(reduce, loss, stop)
                if not math.isfinite(value):
                    raise _nonfinite(desc, value, step, lr, terms, hint)
                optimizer_step(optimizer, loss, clip_grad, clip_params)
                done.losses.append(value)
                done.steps = at.step = step + 1
                took = True
                if log_every > 0 and done.steps % log_every == 0:
                    rows.write(done.steps, lr, value, terms)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2g}", refresh=False)
                if stopping and (total is None or done.steps < total):
                    _stop(checkpoint, optimizer, at, done, resume, stop, total)
                if held.pending and (total is None or done.steps < total):  # (after the last: once saved)
                    held.deliver()  # a pre-emption hook's signal, held until now: a save sees this step's end
            if took and log_every > 0 and done.steps % log_every:
                rows.write(done.steps, lr, value, terms)  # the last step's row
            if checkpoint is not None:  # before the task scores the model
                checkpoint.save(optimizer, at, done.losses, rows.rows, resume.epoch_rng)
    finally:
        bar.close()
    done.seconds = time.perf_counter() - start
    return done


def _restore(checkpoint: FitCheckpoint | None, optimizer, done: FitResult) -> tuple[Position, _Resume | None]:
    """Where the run starts: step 0, or where its checkpoint left it (``done`` then holds the steps before)."""
    if checkpoint is None:
        return Position(), None
    resume = _Resume(checkpoint, checkpoint.restore(optimizer))
    if resume.restored is None:
        return Position(), resume
    restored = resume.restored
    done.steps, done.losses = restored.at.step, restored.losses
    done.rows[:] = restored.rows  # (the list the rows are written to)
    return restored.at, resume


def _stop(checkpoint: FitCheckpoint, optimizer, at: Position, done: FitResult, resume: _Resume, stop: dict,
          total: int | None) -> None:
    """Save the run after the step it was asked to stop in, and stop with one line that says how to go on."""
    path = checkpoint.save(optimizer, at, done.losses, done.rows, resume.epoch_rng)
    of = f" of {total}" if total is not None else ""
    raise Interrupted(f"stopped by {stop['signal'] or 'another process'} at step {done.steps}{of}; saved {path}. "
                      "Run the same command again to resume")
