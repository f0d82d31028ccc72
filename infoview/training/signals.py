"""Signals during a training loop: pre-emption waits for the step to end; Ctrl-C and SIGTERM ask the loop to stop.

Python runs a signal's handler in the main thread between two bytecodes, so while the main thread is inside
one long C call the handler waits for it: torch runs a whole backward pass in one call (a detector's on a CPU
takes minutes), and Ctrl-C then did nothing for as long. :func:`ctrl_c_answered` has Ctrl-C answered at once
by a thread of its own, which the interpreter's C-level handler wakes (``signal.set_wakeup_fd``) whatever the
main thread is doing.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any, Iterator

from infoview.utils.lock import release_all

_STOPPING: list[dict] = []  # the stop requests of the loops running now (stop_requests): they save, then stop
_WAKEUP: list[int] = []  # the pipe ctrl_c_answered reads, while it does


def _no_wakeup_in_child() -> None:
    """A forked child (a DataLoader worker) gets Ctrl-C from the terminal too: its interpreter must not write
    it into the parent's pipe, where it would count as a second press."""
    if _WAKEUP:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for fd in _WAKEUP:
            with contextlib.suppress(OSError):
                os.close(fd)
        _WAKEUP.clear()


os.register_at_fork(after_in_child=_no_wakeup_in_child)

_DEFERRED = tuple(getattr(signal, n) for n in ("SIGUSR2", "SIGTERM") if hasattr(signal, n))


class HeldSignals:
    """SIGUSR2 and SIGTERM handlers someone else installed (a SLURM job's, through submitit) held while a loop
    runs: a signal that comes is kept in ``pending`` and handed to its handler by :meth:`deliver`, which the
    loop calls between two steps (``if held.pending: held.deliver()``: nothing else a step)."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.handlers: dict[int, Any] = {}

    def _hold(self, signum, frame) -> None:
        self.pending.append(signum)

    def deliver(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            self.handlers[signum](signum, sys._getframe(1))

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """A while between two steps (an online evaluation at an epoch's end, which may outlast SLURM's notice):
        what is held is delivered, and the handlers run as their signals come until the block ends."""
        self.deliver()
        for s, handler in self.handlers.items():
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s in self.handlers:
                signal.signal(s, self._hold)


@contextlib.contextmanager
def held_between_steps() -> Iterator[HeldSignals]:
    """Hold SIGUSR2/SIGTERM's own handlers (SLURM's pre-emption and time-out signals) until the loop says it is
    between two steps (:class:`HeldSignals`), the batches' loading and an epoch's end included: a pre-emption
    hook that saves then sees the state after the last step, never half of one, nor a batch taken and not yet
    trained on. (The fit loop delivers them after every step and after an epoch's end.) The default handlers
    and those of :func:`stop_requests` are left alone (they only ask the loop to stop); off the main thread
    nothing is held. A signal still held when the block ends is raised again then."""
    held = HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    for s in _DEFERRED:
        handler = signal.getsignal(s)
        if callable(handler):
            held.handlers[s] = handler
            signal.signal(s, held._hold)
    try:
        yield held
    finally:
        for s, handler in held.handlers.items():
            signal.signal(s, handler)
        for s in held.pending:
            signal.raise_signal(s)


@contextlib.contextmanager
def stop_requests():
    """While training, Ctrl-C (SIGINT) and SIGTERM only ask the loop to stop; it saves, then stops.

    Yields a dict whose "signal" is set to the signal's name. A second Ctrl-C
    stops at once (KeyboardInterrupt). Handlers someone else installed (a
    SLURM job's, through submitit) are left alone; off the main thread nothing
    is installed.
    """
    request: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {s: signal.getsignal(s) for s in defaults}
    mine = [s for s, default in defaults.items() if previous[s] is default]
    for s in mine:
        signal.signal(s, handler)
    _STOPPING.append(request)
    try:
        yield request
    finally:
        _STOPPING.remove(request)
        for s in mine:
            signal.signal(s, previous[s])


@contextlib.contextmanager
def ctrl_c_answered(command: str, grace_s: float = 2.0) -> Iterator[None]:
    """Answer Ctrl-C within moments while ``infoview <command>`` runs, even when the main thread is inside
    one long C call (see the module docstring).

    - A loop that saves on a stop request (:func:`stop_requests`: pretraining, and the evaluators' fit loop
      while it trains) is told by its handler as soon as the main thread gets back; the first Ctrl-C is
      acknowledged at once (it saves between two steps).
    - Otherwise (no such loop runs: a kNN vote, feature extraction, scoring; or a second Ctrl-C) the main
      thread gets ``grace_s`` seconds to stop in order (KeyboardInterrupt, ``finally`` blocks); a main
      thread still inside a C call then is not waited for: the folders this process holds are let go of,
      one line is said, and the process ends with code 130.

    Only in the main thread, with Python's own Ctrl-C handler in place; elsewhere nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:  # (not the main thread of the main interpreter)
        os.close(read)
        os.close(write)
        yield
        return
    _WAKEUP.extend((read, write))
    ended = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read, ended, command, grace_s), daemon=True,
                               name="infoview-ctrl-c")
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        signal.set_wakeup_fd(previous)
        watcher.join(timeout=5)
        _WAKEUP.clear()
        os.close(write)
        os.close(read)


def _watch(read: int, ended: threading.Event, command: str, grace_s: float) -> None:
    """The thread of :func:`ctrl_c_answered`: reads the signal numbers the interpreter writes, acts on SIGINT."""
    presses = 0
    while not ended.is_set():
        if not select.select([read], [], [], 0.2)[0]:
            continue
        try:
            numbers = os.read(read, 512)
        except OSError:
            return
        for number in numbers:
            if number != signal.SIGINT:
                continue
            presses += 1
            if presses == 1 and _STOPPING:
                if os.environ.get("RANK", "0") == "0":
                    _say(f"infoview {command}: Ctrl-C: saving between two steps, then stopping "
                         "(Ctrl-C again stops at once, unsaved)")
                continue
            if ended.wait(grace_s):  # the main thread stopped in order
                return
            release_all()
            _say(f"infoview {command}: interrupted" + (" at once; not saved since the last checkpoint"
                                                      if _STOPPING else ""))
            os._exit(130)


def _say(line: str) -> None:
    with contextlib.suppress(Exception):
        print(line, file=sys.stderr, flush=True)
