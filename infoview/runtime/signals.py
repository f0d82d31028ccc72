"""Signals during a training loop: pre-emption waits for the step to end; Ctrl-C and SIGTERM ask the loop to stop."""
from __future__ import annotations

import contextlib
import signal
import threading

_DEFERRED = tuple(getattr(signal, n) for n in ("SIGUSR2", "SIGTERM") if hasattr(signal, n))
@contextlib.contextmanager
def signals_deferred():
    """Hold SIGUSR2/SIGTERM (SLURM's pre-emption and time-out signals) until the block ends.

    A handler that saves a checkpoint then never sees a half-applied step.
    Only the main thread can do this; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread() or not _DEFERRED:
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)


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
    try:
        yield request
    finally:
        for s in mine:
            signal.signal(s, previous[s])
