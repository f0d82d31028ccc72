"""What :func:`infoview.training.loop.fit` hands the parts of a run that are not the step: components.

A run's step is the task's (``step_fn``); everything around it that differs between pretraining and the
evaluators is a :class:`Component`: the progress bar, the metrics rows, the online monitors, the task's own
latest figures. (The checkpoint, the signals and the non-finite check are the loop's own, through the
checkpoint it is given: ``training.fit_state``.)
The loop calls each at its events and hands it what it needs, by name (:class:`StepEnd`); a component holds
no reference to the loop, and the loop none to what a component holds.

- :meth:`Component.step_end`: after every step (the optimizer has stepped; the step's figures are reduced).
- :meth:`Component.epoch_end`: after an epoch's last step, and after the run's last step (``final``); the
  loop asks :meth:`Component.wants_epoch_end` first, and saves the run before a component that does work
  there (an evaluation killed half-way loses nothing), and again after it at the end (the final checkpoint
  carries the final figures).
- :meth:`Component.close`: when the run ends, finished, stopped or failed.

The batches: what ``fit`` reads every epoch is an iterable, a function of the epoch, or an
:class:`EpochBatches` (:func:`loader_epochs` for an infoview loader, :func:`dataloader_epochs` for a torch
DataLoader on a :class:`SkippingSampler`, :func:`epochs_of` for a function of the epoch and its first batch), which starts an epoch at any batch without reading the ones
before: a run resumed in the middle of an epoch then reads only what it trains on. Its ``epoch`` returns
the epoch's batches already started, so that the loop can set the random states of the step it stopped
after before the first batch is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from infoview.training.fit_state import Position
from infoview.training.metrics import MetricsLog


@dataclass
class StepEnd:
    """A step as the loop hands it on: ``step`` steps are taken with it (the first step's is 1), at
    ``epoch`` epochs (a fraction, when the loop knows the epoch's length); ``lr``: the first group's;
    ``loss``: over every process; ``figures``: the step's reduced figures (``fit``'s ``reduce_step``, by
    name); ``output``: what ``step_fn`` returned, on this process; ``last``: the run's last step."""

    step: int
    epoch: float | None
    lr: float
    loss: float
    figures: Any
    output: Any
    last: bool


class Component:
    """Something ``fit`` calls as a run goes (see the module docstring); every method does nothing here."""

    def step_end(self, end: StepEnd) -> None:
        """After every step."""

    def wants_epoch_end(self, at: Position, final: bool) -> bool:
        """Whether :meth:`epoch_end` does work at this epoch's end (the loop saves the run before it then)."""
        return False

    def epoch_end(self, at: Position, final: bool) -> None:
        """After an epoch's last step (``at``: where the run is), or the run's last (``final``)."""

    def run_end(self, end: StepEnd) -> None:
        """After the run's last step, before the final save and epoch end."""

    def close(self) -> None:
        """When the run ends, however it ends."""


@dataclass
class Rows(Component):
    """The evaluators' rows: every ``every`` steps and after the last one, ``{"step", "epoch" (when the loop
    knows the epoch's length), "lr", "loss", *terms}``, the terms (the step's named tensors, ``output[1]``)
    averaged by ``reduce``; kept in ``rows`` and handed to ``on_log`` (a function or a ``MetricsLog``)."""

    every: int
    on_log: Callable[[dict], object] | MetricsLog | None = None
    reduce: Callable[[Tensor], Tensor] = lambda t: t
    rows: list[dict] = field(default_factory=list)

    def step_end(self, end: StepEnd) -> None:
        if end.step % self.every == 0:
            self._write(end)

    def run_end(self, end: StepEnd) -> None:
        if end.step % self.every:
            self._write(end)  # the last step's row

    def _write(self, end: StepEnd) -> None:
        terms = end.output[1] if isinstance(end.output, tuple) else {}
        row: dict[str, Any] = {"step": end.step}
        if end.epoch is not None:
            row["epoch"] = round(end.epoch, 4)
        row.update(lr=end.lr, loss=end.loss)
        row.update({k: float(self.reduce(v.detach())) for k, v in terms.items()})
        self.rows.append(row)
        if isinstance(self.on_log, MetricsLog):
            self.on_log.write(row)
        elif self.on_log is not None:
            self.on_log(row)


class Progress(Component):
    """The bar on stderr (tqdm): one tick a step, redrawn at most twice a second, with the figures
    ``postfix(end)`` gives (by default the loss and the lr); ``initial``: the step a resumed run starts at."""

    def __init__(self, total: int | None, desc: str, initial: int = 0,
                 postfix: Callable[[StepEnd], dict] | None = None, show: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not show, dynamic_ncols=True, mininterval=0.5,
                        initial=initial)
        self.postfix = postfix or (lambda end: dict(loss=f"{end.loss:.3f}", lr=f"{end.lr:.2g}"))

    def step_end(self, end: StepEnd) -> None:
        self.bar.update(1)
        self.bar.set_postfix(self.postfix(end), refresh=False)

    def close(self) -> None:
        self.bar.close()


class EpochBatches:
    """Batches that start an epoch at any batch: ``epoch(number, start)`` gives epoch ``number``'s batches
    from batch ``start`` on, without reading those before."""

    def epoch(self, number: int, start: int) -> Iterable:
        raise NotImplementedError


class _Epochs(EpochBatches):
    def __init__(self, function: Callable[[int, int], Iterable]):
        self.function = function

    def epoch(self, number: int, start: int) -> Iterable:
        return self.function(number, start)


def epochs_of(epoch: Callable[[int, int], Iterable]) -> EpochBatches:
    """``epoch(number, start)``, a function giving epoch ``number``'s batches from batch ``start`` on (already
    started: see the module docstring), as :class:`EpochBatches`."""
    return _Epochs(epoch)


def loader_epochs(loader, before: Callable[[], object] | None = None) -> EpochBatches:
    """An infoview loader (``infoview.data.build_loader``: its ``set_epoch(epoch, start_batch)``) as
    :class:`EpochBatches`; ``before()`` runs as each epoch begins (``model.train()``, after an evaluation)."""

    def epoch(number: int, start: int) -> Iterable:
        loader.set_epoch(number, start_batch=start)
        if before is not None:
            before()
        return loader

    return epochs_of(epoch)


class SkippingSampler(torch.utils.data.Sampler):
    """A DataLoader's sampler that can start a pass part-way (:meth:`prepare`): ``inner``'s order, drawn as it
    always is, its first indices passed over unread. ``set_epoch`` reaches ``inner`` (a ``DistributedSampler``)."""

    def __init__(self, inner: torch.utils.data.Sampler):
        self.inner, self._order = inner, None

    def prepare(self, skip: int) -> None:
        """Draw the coming pass's order now (a loader draws it at its first batch) and start it ``skip`` in."""
        self._order = list(self.inner)[skip:]

    def __iter__(self):
        order, self._order = self._order, None
        return iter(order if order is not None else self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


class _DataLoaderEpochs(EpochBatches):
    def __init__(self, loader: torch.utils.data.DataLoader):
        if not isinstance(loader.sampler, SkippingSampler) or loader.batch_size is None:
            raise TypeError("dataloader_epochs: the loader needs a batch_size and a SkippingSampler")
        self.loader = loader

    def epoch(self, number: int, start: int) -> Iterable:
        if hasattr(self.loader.sampler.inner, "set_epoch"):
            self.loader.sampler.set_epoch(number)
        if start == 0:
            return self.loader
        batches = iter(self.loader)  # what an epoch's start draws (the workers' seed), then the order, as a
        self.loader.sampler.prepare(start * self.loader.batch_size)  # run never stopped draws them; nothing read
        return batches


def dataloader_epochs(loader: torch.utils.data.DataLoader) -> EpochBatches:
    """A torch DataLoader built on a :class:`SkippingSampler` as :class:`EpochBatches`: each epoch sets its
    sampler's epoch (a ``DistributedSampler``'s order), and a resumed one loads only the batches after
    those it had trained on, its order and random draws those of the run never stopped."""
    return _DataLoaderEpochs(loader)
