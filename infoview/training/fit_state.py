"""Exact resume for a run of :func:`infoview.training.loop.fit`: what a stopped run saves, and how it goes on.

An evaluator (``infoview linear``, ``detect``, ``segment``) hands ``fit`` a :class:`FitCheckpoint` for
its folder. Then:

- Ctrl-C (SIGINT) or SIGTERM asks the loop to stop (``training.signals.stop_requests``); it ends the step
  it is in, saves here (``OUT/checkpoints/last.pt``, written atomically) and stops with
  :class:`~infoview.errors.Interrupted`, one line that says how to resume. Under DDP every process stops
  after the same step (the request travels with the step's loss in the one reduction it already makes).
- After its last step the loop saves here too, before the task scores the model: scoring that fails or is
  stopped does not cost the training again. ``train.ckpt_every_steps`` (detect, segment) saves every N steps
  besides: a way back in after a kill that leaves no time to save.
- The same command run again finds the file and goes on from the step it holds, with the same result as a
  run never stopped: the file holds the trained modules, the optimizer (its momentum buffers, its groups'
  ``base_lr``), the step, the position in the data (epoch, batch), the losses and rows so far, and every
  random state a step draws from (torch's, numpy's, Python's, CUDA's, and the task's own generators) as
  they were after that step and when its epoch began. A run resumed in the middle of an epoch starts the
  epoch again from its random states, drops the batches it had trained on (read again, not trained on),
  then takes up the states of the step it stopped after. Data loader workers that persist across epochs
  draw from states of their own, which are not saved: past the first epoch a run with loader workers
  resumes with the same images in the same order, its random crops and flips drawn afresh.
- A checkpoint made with other settings (``settings``: the run's config; the keys in ``may_change`` aside)
  is refused with one line naming the differences and the file, before anything trains.
- The task removes the file (:meth:`FitCheckpoint.remove`) once it has written its result: an evaluator's
  checkpoint is only a way back into an unfinished run, not a product (pretraining's is, and stays).
- A step whose loss is not finite stops the run before its backward; the modules, the optimizer and the
  batch of that step are saved beside ``last.pt`` first (:meth:`FitCheckpoint.dump`), and the error names
  the file.

Nothing of this costs a step anything: the random states are read once an epoch, and the stop request is
one more number in a reduction the loop already makes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from infoview.errors import InfoviewError
from infoview.training import distributed as D
from infoview.training.checkpoint import read_state, remove_stale_temps, rng_state, save_checkpoint, set_rng_state
from infoview.training.signals import HeldSignals, held_between_steps

FORMAT = "infoview-fit-1"
LAST = "last.pt"
#: keys that change how a run goes, not what it trains: a resumed run may change them
MAY_CHANGE = ("out_dir", "overwrite", "train.progress", "train.device", "train.threads", "data.num_workers",
              "train.ckpt_every_steps")


@dataclass
class Position:
    """Where a run is: ``step`` steps taken; the next batch is batch ``batch`` of epoch ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class Restored:
    """What :meth:`FitCheckpoint.restore` hands the loop: where to go on, and what the steps so far gave."""

    at: Position
    losses: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    epoch_rng: Any = None  # the random states when the epoch began
    rng: Any = None  # ... and after the step it stopped after


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _state_of(rng) -> torch.Tensor:
    """The state of a task's generator: a ``torch.Generator``, or what has ``get_rng_state`` (augment's views)."""
    return rng.get_state() if isinstance(rng, torch.Generator) else rng.get_rng_state()


def _set_state(rng, state: torch.Tensor) -> None:
    if isinstance(rng, torch.Generator):
        rng.set_state(state)
    else:
        rng.set_rng_state(state)


class FitCheckpoint:
    """A fit run's state in ``folder/last.pt``: saved when a signal stops it and after its last step, restored
    when it runs again (see the module docstring).

    ``settings``: the run's config as plain values, compared with the checkpoint's (the keys in
    :data:`MAY_CHANGE` and ``may_change`` aside; a key ending in ``.`` is a section); ``command``: the
    command, named in messages. The file is read and its settings checked here, so a mismatch is said before
    anything expensive runs. :meth:`track` then names what the run trains and draws from.
    """

    def __init__(self, folder: str | os.PathLike, *, settings: Mapping, command: str = "fit", may_change: tuple = ()):
        self.path = Path(folder) / LAST
        self.command = command
        self.modules: dict[str, nn.Module] = {}
        self.rngs: dict[str, Any] = {}
        self.settings = {k: v for k, v in _flat(settings).items()
                         if not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_CHANGE + may_change)}
        info = D.env_info()
        self.rank, self.world, self.main = info.rank, info.world_size, info.is_main
        if self.main:
            remove_stale_temps(self.path.parent)  # of a save a killed process never finished
        self.state = self._read() if self.path.is_file() else None

    def track(self, modules: Mapping[str, nn.Module], rngs: Mapping[str, Any] | None = None) -> "FitCheckpoint":
        """``modules``: ``{name: module}`` whose weights the run trains; ``rngs``: ``{name: generator}`` the task
        draws from besides the global ones (a ``torch.Generator``, or an object with ``get_rng_state`` and
        ``set_rng_state``: augment's views)."""
        self.modules, self.rngs = dict(modules), dict(rngs or {})
        return self

    def _read(self) -> dict:
        again = f"; remove {self.path.parent} to start afresh"
        state = read_state(self.path, again)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InfoviewError(f"{self.path} is not a checkpoint of infoview {self.command}{again}")
        differ = [f"{k}: {state['settings'].get(k, '<unset>')} -> {self.settings.get(k, '<unset>')}"
                  for k in sorted(set(state["settings"]) | set(self.settings))
                  if state["settings"].get(k, "<unset>") != self.settings.get(k, "<unset>")]
        if state["world_size"] != self.world:
            differ.append(f"processes: {state['world_size']} -> {self.world}")
        if differ:
            shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise InfoviewError(f"{self.path} holds an unfinished run with other settings ({shown}); run it with "
                                f"its settings to finish it, or choose another out_dir{again}")
        return state

    # -- the random states ---------------------------------------------------------
    def rng(self) -> dict:
        """This process's random states now: the global ones and the task's."""
        return {"global": rng_state(), **{f"task.{k}": _state_of(g) for k, g in self.rngs.items()}}

    def set_rng(self, states: dict) -> None:
        set_rng_state(states["global"])
        for name, gen in self.rngs.items():
            _set_state(gen, states[f"task.{name}"])

    # -- save, restore, remove -----------------------------------------------------
    def save(self, optimizer: torch.optim.Optimizer, at: Position, losses: list[float], rows: list[dict],
             epoch_rng: dict, collective: bool = True) -> Path:
        """The run's state after step ``at.step`` (a collective under DDP: every process calls it; with
        ``collective=False`` this process writes alone, its own random states only: see :func:`current_fit`)."""
        mine = {"epoch": epoch_rng, "now": self.rng()}
        rngs = D.all_gather_object(mine) if collective else [mine]
        if self.main:
            state = {
                "step": at.step, "epoch": at.epoch, "batch": at.batch, "world_size": self.world,
                "settings": self.settings, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizer": optimizer.state_dict(), "losses": torch.tensor(losses, dtype=torch.float64),
                "rows": rows, "rng": rngs,
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(state, self.path, keep_previous=False, format=FORMAT)
            except OSError as exc:  # (a full disk, no permission: the previous file, if any, is left whole)
                raise InfoviewError(f"cannot save {self.path} ({exc.strerror or exc})") from None
        if collective:
            D.barrier()
        return self.path

    def restore(self, optimizer: torch.optim.Optimizer) -> Restored | None:
        """Load the saved modules and optimizer; where to go on (None: nothing saved, a new run)."""
        state = self.state
        if state is None:
            return None
        try:
            for name, module in self.modules.items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise InfoviewError(f"{self.path} does not fit this run's model ({str(exc).splitlines()[0]}); remove "
                                f"{self.path.parent} to start afresh") from None
        saved = state["rng"]  # (a pre-emption hook's save holds the first process's only: the others keep theirs)
        mine = saved[self.rank] if self.rank < len(saved) else {"epoch": self.rng(), "now": self.rng()}
        return Restored(Position(int(state["step"]), int(state["epoch"]), int(state["batch"])),
                        state["losses"].tolist(), list(state["rows"]), mine["epoch"], mine["now"])

    def remove(self) -> None:
        """Once the task's result is written (see :func:`remove_checkpoint`)."""
        remove_checkpoint(self.path.parent)

    def dump(self, step: int, optimizer: torch.optim.Optimizer, batch: Any) -> Path:
        """What replays step ``step``, whose loss was not finite: the modules and the optimizer as they were
        before it (the loop stops before its backward) and its batch, in ``nonfinite_step<S>_rank<R>.pt``
        beside ``last.pt`` (read with ``weights_only=True``); every process writes its own. It stays when
        the folder is removed."""
        path = self.path.parent / f"nonfinite_step{step}_rank{self.rank}.pt"
        state = {"step": step, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                 "optimizer": optimizer.state_dict(), "batch": _on_cpu(batch)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(state, path, keep_previous=False, format=FORMAT + "-nonfinite")
        except OSError as exc:
            raise InfoviewError(f"the loss is not finite at step {step}, and {path} cannot be saved "
                                f"({exc.strerror or exc})") from None
        return path


def _on_cpu(batch: Any) -> Any:
    """A batch's tensors on the CPU, in the lists, tuples and dicts that hold them."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu()
    if isinstance(batch, Mapping):
        return {k: _on_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [_on_cpu(v) for v in batch]
    return batch


def remove_checkpoint(folder: str | os.PathLike) -> None:
    """An evaluator's ``folder/last.pt`` once its result is written, and the folder when that is left empty
    (rank 0's work; other processes do nothing)."""
    if not D.env_info().is_main:
        return
    folder = Path(folder)
    (folder / LAST).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


# -- the run going on now, for a pre-emption hook ------------------------------------
_RUNNING: list["RunningFit"] = []  # the fit runs with a checkpoint going on in this process


@dataclass
class RunningFit:
    """A :func:`~infoview.training.loop.fit` run with a checkpoint, while it runs: what :meth:`save_now` saves
    (``resume``: the loop's, whose ``epoch_rng`` are the random states its epoch began with)."""

    checkpoint: FitCheckpoint
    optimizer: torch.optim.Optimizer
    at: Position
    losses: list[float]
    rows: list[dict]
    resume: Any

    @property
    def step(self) -> int:
        return self.at.step

    def save_now(self) -> Path | None:
        """Save the state after the last finished step, from the first process alone, with no collective: for
        a pre-emption or time-out hook, which ``fit`` runs between two steps only
        (``training.signals.held_between_steps``). Other processes' random states are not saved: a run
        resumed from it goes on with theirs as seeded. Other processes: None."""
        if not self.checkpoint.main:
            return None
        return self.checkpoint.save(self.optimizer, self.at, self.losses, self.rows, self.resume.epoch_rng,
                                    collective=False)


def current_fit() -> RunningFit | None:
    """The fit run with a checkpoint going on in this process, for a pre-emption hook (``infoview launch``)."""
    return _RUNNING[-1] if _RUNNING else None


@contextlib.contextmanager
def running(run: RunningFit | None) -> Iterator[HeldSignals]:
    """While ``fit`` runs: ``run`` is :func:`current_fit`, and SIGUSR2/SIGTERM's own handlers are held until
    the loop is between two steps (a :class:`HeldSignals` it delivers; an empty one without a ``run``)."""
    if run is None:
        yield HeldSignals()
        return
    with held_between_steps() as held:
        _RUNNING.append(run)
        try:
            yield held
        finally:
            _RUNNING.remove(run)  # (before a held signal's handler runs: the run has saved its last step)
