"""``infoview <command> [--config FILE] [key=value ...]``: one thin entry point.

The commands are the modules of :mod:`infoview.commands`, one per command,
each with what it declares about itself (``COMMAND``: its one-line help,
whether it is distributed or resumable), its ``DEFAULTS`` and its ``run``.
A new command is one new module there; this file lists and dispatches them.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Sequence

from infoview import schema
from infoview.commands import build_config, command_help, load_command, names
from infoview.errors import InfoviewError, Interrupted
from infoview.training.signals import ctrl_c_answered
from infoview.version import __version__


def _usage() -> str:
    width = max(len(c) for c in names())
    lines = [
        "usage: infoview <command> [--config FILE] [key=value ...]",
        "",
        "Self-supervised pretraining around mutual-information bounds.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command_help(name)}" for name in names()]
    lines += [
        "",
        "`infoview <command> --help` (or `infoview help <command>`) lists the command's keys and",
        "their defaults; `infoview list presets|objectives|methods|sources|recipes|archs` lists names.",
        "Keys are dotted (optim.lr=0.1); --config reads a YAML file (a path, or a preset",
        "name: `infoview list presets`) and key=value arguments override it.",
    ]
    return "\n".join(lines)


def _command_help(name: str, module) -> str:
    command = module.COMMAND
    doc = (module.__doc__ or command.help).strip()
    positional = " ".join(p.upper() for p in command.positional)
    head = command.usage or (
        f"usage: infoview {name} {positional + ' ' if positional else ''}[--config FILE] [key=value ...]"
    )
    if not hasattr(module, "DEFAULTS"):  # a command without keys (list)
        return f"{head}\n\n{doc}"
    return f"{head}\n\n{doc}\n\nkeys and defaults:\n" + schema.describe(module.DEFAULTS)


def _print(text: str) -> None:
    """Print, and stay quiet when the reader has gone (``infoview --help | head``)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the closed pipe


class _ReaderMayLeave:
    """``sys.stdout`` or ``sys.stderr`` while a command runs: when the reader of the pipe has gone
    (``infoview pretrain ... | tee log``, where Ctrl-C ends tee as well), writing goes nowhere instead of
    raising BrokenPipeError in the middle of a step, so the run still saves at the step it stops. The
    descriptor is pointed at /dev/null then, so that nothing left in the buffer fails again at exit."""

    def __init__(self, stream):
        self._stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self.gone = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # a stream without a descriptor (a test's capture)
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _outputs_may_close():
    """stdout and stderr as :class:`_ReaderMayLeave` for the length of a command (restored after it)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_ReaderMayLeave(s) if s is not None else s for s in saved)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def run(command: str, *args: str, config: str | os.PathLike | None = None, **keys: Any) -> dict | None:
    """Run ``infoview <command>`` from Python and return what it returns (the figures the CLI prints as JSON).

    ``args`` are the command-line arguments as text (``"train.epochs=2"``, a positional such as the source of
    ``prepare``); ``config`` is ``--config``: a YAML path or a preset's name; ``keys`` are keys with Python
    values, a section as a dict (``out_dir="runs/x", train={"epochs": 2}``). Bad input raises the one-line
    :class:`~infoview.errors.InfoviewError` (or ConfigError) the CLI would print, before any work.
    ``launch`` takes its arguments as text only (``run("launch", "pretrain", "--config", "demo")``).
    """
    argv = [*([f"--config={os.fspath(config)}"] if config is not None else []), *map(str, args)]
    module = load_command(command)
    if hasattr(module, "main"):  # a command that parses its own arguments
        if keys:
            raise InfoviewError(f"infoview {command} takes its arguments as text: run({command!r}, "
                                f"'key=value', ...), not {sorted(keys)[0]}=...")
        return module.main(argv)
    module, cfg = build_config(command, argv, keys)
    return module.run(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    with _outputs_may_close():
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"] and len(argv) > 1:
        argv = [argv[1], "--help"]  # `infoview help pretrain` is `infoview pretrain --help`
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"infoview {__version__}")
        return 0
    name, args = argv[0], argv[1:]
    # Before torch is imported: idle OpenMP threads sleep instead of spinning,
    # which otherwise stalls every op when loader workers share the cores
    # (docs/results.md, Views). A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if any(a in ("-h", "--help") for a in args):
            _print(_command_help(name, load_command(name)))
            return 0
        module = load_command(name)
        with ctrl_c_answered(name):  # at once, also while the main thread is inside one long C call
            if hasattr(module, "main"):
                result = module.main(args)
            else:
                module, cfg = build_config(name, args)
                result = module.run(cfg)
    except Interrupted as exc:
        print(f"infoview {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except InfoviewError as exc:
        print(f"infoview {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infoview {name}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
