"""The one training loop: pretraining and every evaluator run on ``fit``; only what a step computes differs.

``fit`` runs the common part and takes the task's part as a function,
``step_fn(batch) -> loss`` (or ``(loss, terms)``, a dict of named scalar
tensors the loss is made of; or ``(loss, output)``, anything the task's
``reduce_step`` reads). For every step it

1. sets the learning rate: ``set_lr(optimizer, *schedule(step))``, the
   schedule giving one factor or a tuple of factors of each group's
   ``base_lr`` (``training.optim``'s schedules are such functions of the step);
2. runs ``step_fn`` on the next batch, under autocast when ``amp_dtype`` is
   given (the device is the parameters');
3. reduces the step's figures over the processes in one reduction
   (``reduce_step``; by default the loss and the stop request, averaged by
   ``reduce``), so every process decides alike: a loss that is not finite
   stops the run before its backward with :class:`NonFiniteLoss`, one line
   that names the step, the learning rate, the terms and what to change
   (``hint``), after ``on_nonfinite`` (pretraining's dump) or the
   checkpoint's ``dump`` has saved what replays the step;
4. ``zero_grad``, ``backward``, clips the gradients' global norm to
   ``clip_grad`` when it is positive, and steps the optimizer (through a
   ``GradScaler`` when given: :func:`optimizer_step`);
5. hands the step, by name (``training.components.StepEnd``), to its
   components: the rows (every ``log_every`` steps and after the last one,
   ``{"step", "epoch" (when ``steps_per_epoch`` is given), "lr", "loss",
   *terms}``, kept and handed to ``on_log``, a function or a
   ``training.metrics.MetricsLog``), and the task's own (pretraining's
   metrics.csv and online monitors), and the progress bar (tqdm).

The batches: ``batches`` is an iterable that is iterated again for every
epoch (a DataLoader), a function of the epoch that returns that epoch's
batches (to call ``sampler.set_epoch`` first, or to draw a new order), or a
``training.components.EpochBatches`` that starts an epoch at any batch. The
run stops after ``steps`` steps, in the middle of an epoch if need be, or after
``epochs`` whole passes; with both, at whichever comes first. An epoch
without a single batch is an error (the run would never end).

Steps are counted from 0: the step a message names is the number of steps
taken before it (the first is step 0), and a row's ``step`` is the number of
steps taken when it is written (the first row of ``log_every=1`` is step 1).

Given a ``checkpoint`` (``training.fit_state.FitCheckpoint``, or
pretraining's ``pretrain.checkpoint.PretrainCheckpoint``), the run goes
on from the step it holds; Ctrl-C or SIGTERM (``training.signals.stop_requests``)
saves after the step in progress and stops with ``Interrupted``, one line
saying how to go on (the request is reduced with the step's figures, so every
process stops after the same step); it saves as ``saves`` says (every n steps,
every n epochs) and after its last step, before the task scores it, and before
and after a component's work at an epoch's end. ``training.fit_state`` says
what is saved. While such a run goes on, ``training.fit_state.current_fit()``
reaches it (a pre-emption hook saves it), and the handlers of SIGUSR2/SIGTERM
that someone else installed (SLURM's, through submitit) run between two steps
only (``training.signals.held_between_steps``).

What is not here stays with the task: building the model, its loss, the data
and the report. The MI benchmark uses only :func:`progress_bar` and
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
from infoview.training.components import Component, EpochBatches, Progress, Rows, StepEnd
from infoview.training.distributed import is_distributed
from infoview.training.fit_state import FitCheckpoint, Position, Restored, RunningFit, running
from infoview.training.metrics import MetricsLog
from infoview.training.optim import set_lr
from infoview.training.signals import HeldSignals, stop_requests

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
    """The bar every loop shows on stderr: one tick a step, redrawn at most twice a second (``fit``'s is a
    ``training.components.Progress``)."""
    return Progress(total, desc, initial, show=progress).bar


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor, clip_grad: float = 0.0,
                   clip_params: Sequence[Tensor] | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """``zero_grad``, ``backward``, the gradients' global norm clipped to ``clip_grad`` (when > 0), ``step``.

    ``clip_params``: the parameters whose norm is clipped, in the order given
    (the order of the sum, so of the last bits); by default the optimizer's.
    ``scaler``: a ``GradScaler`` (fp16) scales the loss, unscales the gradients
    before they are clipped, steps and updates its scale.
    """
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if clip_grad > 0:
        if clip_params is None:
            clip_params = [p for g in optimizer.param_groups for p in g["params"]]
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(clip_params, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _batches(batches, steps: int | None, epochs: int | None, desc: str, at: Position, resume: _Resume | None,
             epoch_end: Callable[[], None]):
    """Every batch of the run from ``at`` on, epoch after epoch, until ``steps`` steps or ``epochs`` passes;
    ``at`` follows the batches handed out, and ``epoch_end()`` runs between an epoch and the next (not after
    the run's last: the loop ends it). ``resume``: the random states of each epoch's start are read (for a
    checkpoint), and a resumed run's first epoch starts at the batch it had come to."""
    while (steps is None or at.step < steps) and (epochs is None or at.epoch < epochs):
        if resume is not None:
            resume.epoch_begins(at)
        if isinstance(batches, EpochBatches):
            epoch = iter(batches.epoch(at.epoch, at.batch))
        else:
            epoch = iter(batches(at.epoch) if callable(batches) else batches)
            if resume is not None:
                resume.skip(epoch, at)
        if resume is not None:
            resume.resumed()
        empty = True
        for batch in epoch:
            empty = False
            at.batch += 1
            yield batch
            if steps is not None and at.step >= steps:
                return
        if empty and at.batch == 0:
            raise InfoviewError(f"{desc}: epoch {at.epoch} gave no batch to train on")
        at.epoch, at.batch = at.epoch + 1, 0
        if (steps is None or at.step < steps) and (epochs is None or at.epoch < epochs):
            epoch_end()


class _Resume:
    """``fit``'s side of a checkpoint: the epoch's random states, and a resumed run's way back in."""

    def __init__(self, checkpoint: FitCheckpoint, restored: Restored | None):
        self.checkpoint, self.restored = checkpoint, restored
        self.epoch_rng = restored.epoch_rng if restored is not None else None

    def epoch_begins(self, at: Position) -> None:
        if self.restored is None:
            self.epoch_rng = self.checkpoint.rng()
        elif self.restored.epoch_rng is not None:  # the resumed epoch begins as it did, from its states
            self.epoch_rng = self.restored.epoch_rng
            self.checkpoint.set_rng(self.epoch_rng)

    def skip(self, epoch, at: Position) -> None:
        """A resumed run reading plain batches: the epoch's first ``at.batch`` read again, not trained on."""
        if self.restored is not None:
            for _ in range(at.batch):
                next(epoch, None)

    def resumed(self) -> None:
        """A resumed run, at the batch it had come to: the random states of the step it stopped after."""
        if self.restored is not None and self.restored.rng is not None:
            self.checkpoint.set_rng(self.restored.rng)
        self.restored = None


def _set_lr(optimizer: torch.optim.Optimizer, schedule: Schedule | None, step: int) -> float:
    """The schedule's lr for ``step`` set on every group (or the lr as it is, without one); the first group's."""
    if schedule is None:
        return optimizer.param_groups[0]["lr"]
    factors = schedule(step)
    return set_lr(optimizer, *factors) if isinstance(factors, tuple) else set_lr(optimizer, factors)


def _nonfinite(desc: str, value: float, step: int, lr: float, output, hint: str, dumped) -> NonFiniteLoss:
    terms = output[1] if isinstance(output, tuple) and isinstance(output[1], dict) else {}
    parts = "".join(f", {k} {float(v.detach()):.3g}" for k, v in terms.items())
    saved = f"; the model, the optimizer and the batch are saved in {dumped} to investigate" if dumped else ""
    return NonFiniteLoss(f"{desc}: the loss is {value} at step {step} (lr {lr:.3g}{parts}){saved}; {hint}")


@dataclass(frozen=True)
class LossFigures:
    """A step's figures as ``fit`` reduces them by default: the loss over the processes; ``stop``: whether
    any process was asked to stop; ``nonfinite``: whether the loss is nan or infinite."""

    loss: float
    stop: bool
    nonfinite: bool


def reduce_loss(reduce: Callable[[Tensor], Tensor]) -> Callable[[Any, bool], LossFigures]:
    """``fit``'s default ``reduce_step``: the loss and the stop request, in the one reduction a step makes."""

    def reduce_step(output, asked: bool) -> LossFigures:
        loss = (output[0] if isinstance(output, tuple) else output).detach()
        if not is_distributed():  # (this process's request is every process's)
            value = float(reduce(loss))
            return LossFigures(value, asked, not math.isfinite(value))
        value, stop = reduce(torch.stack([loss, loss.new_tensor(float(asked))])).tolist()
        return LossFigures(value, stop > 0, not math.isfinite(value))

    return reduce_step


@dataclass
class Saves:
    """When a run with a checkpoint saves, besides on a stop request and after its last step: every
    ``every_steps`` steps and at the end of every ``every_epochs``-th epoch (0: never). A step that ends
    an epoch saved there saves once."""

    every_steps: int = 0
    every_epochs: int = 0

    def at_epoch_end(self, epochs_done: int) -> bool:
        return self.every_epochs > 0 and epochs_done % self.every_epochs == 0

    def at_step(self, step: int, steps_per_epoch: int | None) -> bool:
        if self.every_steps <= 0 or step % self.every_steps:
            return False
        return not (steps_per_epoch and step % steps_per_epoch == 0 and self.at_epoch_end(step // steps_per_epoch))


def fit(
    step_fn: Callable[[Any], StepOutput],
    optimizer: torch.optim.Optimizer,
    batches: Iterable | Callable[[int], Iterable] | EpochBatches,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    schedule: Schedule | None = None,
    clip_grad: float = 0.0,
    clip_params: Sequence[Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    reduce_step: Callable[[Any, bool], Any] | None = None,
    log_every: int = 0,
    on_log: Callable[[dict], object] | MetricsLog | None = None,
    steps_per_epoch: int | None = None,
    progress: bool = False,
    postfix: Callable[[StepEnd], dict] | None = None,
    desc: str = "train",
    hint: str = "lower the learning rate",
    checkpoint: FitCheckpoint | None = None,
    saves: Saves | None = None,
    components: Sequence[Component] = (),
    on_nonfinite: Callable[[int, Any, Any, Any], None] | None = None,
) -> FitResult:
    """Train through ``step_fn`` for ``steps`` steps or ``epochs`` epochs of ``batches``; see the module docstring.

    ``schedule(step)`` gives the lr factor(s) of each group's ``base_lr`` (a
    group without one takes its lr when the loop starts); without a schedule
    the lr stays as it is. ``reduce`` averages a value over the processes
    (``training.distributed.all_reduce_mean``); ``steps_per_epoch`` gives the
    rows an ``epoch`` column and the bar its length in ``epochs`` mode.
    ``log_every=0``: no rows. ``desc`` names the loop in the bar and in errors.
    ``checkpoint``: the run goes on from what it holds, saves there when
    Ctrl-C or SIGTERM stops it (then raises ``Interrupted``), as ``saves``
    says and after its last step (``training.fit_state``).

    What pretraining adds (``pretrain/engine.py``): ``scaler``, a ``GradScaler``
    for fp16; ``reduce_step(output, asked) -> figures`` (``.loss``, ``.stop``,
    ``.nonfinite``; by default :func:`reduce_loss`); ``on_nonfinite(step,
    figures, batch, output)``, which saves what replays a step whose loss is
    not finite and raises; ``components`` (``training.components``) and
    ``postfix(end)``, the bar's figures.
    """
    if steps is None and epochs is None:
        raise ValueError("fit: give steps or epochs")
    if schedule is not None:
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
    reduce = reduce or (lambda t: t)
    rows = Rows(log_every, on_log, reduce) if log_every > 0 else None
    done = FitResult(rows=rows.rows if rows is not None else [])
    at, resume = _restore(checkpoint, optimizer, done)
    total = steps if steps is not None else epochs * steps_per_epoch if steps_per_epoch else None
    components = [*components, *([rows] if rows is not None else []),
                  Progress(total, desc, at.step, postfix, show=progress)]
    loop = _Loop(step_fn, optimizer, schedule, (clip_grad, clip_params, scaler), _autocast(optimizer, amp_dtype),
                 reduce_step or reduce_loss(reduce), steps_per_epoch, total, desc, hint, checkpoint, saves or Saves(),
                 components, on_nonfinite, done, at, resume)
    start = time.perf_counter()
    try:
        loop.run(batches, steps, epochs)
    finally:
        for c in components:
            c.close()
    done.seconds = time.perf_counter() - start
    return done


def _autocast(optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None):
    """Autocast to ``amp_dtype`` on the device of the parameters; nothing without one."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(optimizer.param_groups[0]["params"][0].device.type, dtype=amp_dtype)


@dataclass
class _Loop:
    """A :func:`fit` run while it runs: its settings, where it is, and what happens at each step and epoch end."""

    step_fn: Callable
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None
    clip: tuple  # (clip_grad, clip_params, scaler): what optimizer_step takes after the loss
    autocast: Any
    reduce_step: Callable[[Any, bool], Any]
    steps_per_epoch: int | None
    total: int | None
    desc: str
    hint: str
    checkpoint: Any
    saves: Saves
    components: list[Component]
    on_nonfinite: Callable | None
    done: FitResult
    at: Position
    resume: _Resume | None
    held: HeldSignals = field(default_factory=HeldSignals)
    stop: dict | None = None

    def run(self, batches, steps: int | None, epochs: int | None) -> None:
        c = self.checkpoint
        run = RunningFit(c, self.optimizer, self.at, self.done.losses, self.done.rows, self.resume) if c else None
        with running(run) as self.held, stop_requests() if c is not None else contextlib.nullcontext() as self.stop:
            end = None
            for batch in _batches(batches, steps, epochs, self.desc, self.at, self.resume, self.epoch_end):
                end = self.step(batch)
                self.after(end)
            if end is not None:  # before the task scores the model
                for component in self.components:
                    component.run_end(end)
                self.epoch_end(final=True)

    def step(self, batch) -> StepEnd:
        """One step on ``batch``: the lr, the task's step, its figures reduced, the checks, the optimizer's step."""
        step = self.at.step
        lr = _set_lr(self.optimizer, self.schedule, step)
        with self.autocast:
            output = self.step_fn(batch)
        figures = self.reduce_step(output, self.stop is not None and self.stop["signal"] is not None)
        if figures.nonfinite:
            if self.on_nonfinite is not None:
                self.on_nonfinite(step, figures, batch, output)
            c = self.checkpoint
            dumped = c.dump(step, self.optimizer, batch) if isinstance(c, FitCheckpoint) else None
            raise _nonfinite(self.desc, figures.loss, step, lr, output, self.hint, dumped)
        optimizer_step(self.optimizer, output[0] if isinstance(output, tuple) else output, *self.clip)
        self.done.losses.append(figures.loss)
        self.done.steps = self.at.step = step + 1
        spe, total = self.steps_per_epoch, self.total
        return StepEnd(self.done.steps, self.done.steps / spe if spe else None, lr, figures.loss, figures, output,
                       total is not None and self.done.steps >= total)

    def after(self, end: StepEnd) -> None:
        """The components; then a stop request (save, stop), a periodic save, a held signal (not after the last
        step: the run saves at its end)."""
        for c in self.components:
            c.step_end(end)
        if end.last:
            return
        if end.figures.stop:
            _stop(self.checkpoint, self.save, self.done, self.stop, self.total)
        if self.checkpoint is not None and self.saves.at_step(end.step, self.steps_per_epoch):
            self.save()
        if self.held.pending:
            self.held.deliver()  # a pre-emption hook's signal, held until now: a save sees this step's end

    def save(self) -> None:
        self.checkpoint.save(self.optimizer, self.at, self.done.losses, self.done.rows, self.resume.epoch_rng)

    def epoch_end(self, final: bool = False) -> None:
        """Between two epochs, or after the last step (``final``): the save, the components' work."""
        busy = [c for c in self.components if c.wants_epoch_end(self.at, final)]
        if self.checkpoint is not None and (final or busy or self.saves.at_epoch_end(self.at.epoch)):
            self.save()  # before the components: an evaluation killed half-way loses nothing
        for c in busy:
            with self.held.released():  # (the state is between two steps: a pre-emption hook need not wait)
                c.epoch_end(self.at, final)
        if self.checkpoint is not None and final and busy:
            self.save()  # the final checkpoint carries the final figures too
        if self.held.pending and not final:
            self.held.deliver()


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


def _stop(checkpoint: FitCheckpoint, save: Callable[[], None], done: FitResult, stop: dict, total: int | None):
    """Save the run after the step it was asked to stop in, and stop with one line that says how to go on."""
    save()
    of = f" of {total}" if total is not None else ""
    hint = getattr(checkpoint, "resume_hint", "")
    raise Interrupted(f"stopped by {stop['signal'] or 'another process'} at step {done.steps}{of}; saved "
                      f"{checkpoint.path}. Run the same command again to resume{hint}")
