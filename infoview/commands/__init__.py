"""The commands: one module per ``infoview <command>``, and what each declares about itself.

A command module ``infoview/commands/<name>.py`` (``mi_bench.py`` is
``infoview mi-bench``; ``list_.py`` is ``infoview list``, its trailing ``_``
keeping a builtin's name free) holds:

- ``COMMAND``: a :class:`Command`: its one-line help and how it behaves under
  ``infoview launch`` (distributed or not, resumable or not);
- ``DEFAULTS``: a nested dict of every key it accepts: its default, or an
  :class:`infoview.schema.Key` with the default, one line of help and the
  choices or bounds it takes (checked before ``run``, shown by ``--help``);
- ``run(cfg)``: does the work (may return a dict, printed as JSON), or
  ``main(args)`` when the command parses its own arguments (``launch``).

A command module imports only this package and light modules at import time;
the work's own modules (torch, the engine, the evaluators) are imported inside
``run``. The commands' registry (:mod:`infoview.utils.registry`) reads each
module's ``COMMAND`` help from its file, so ``infoview --help`` lists every
command without importing one; ``infoview <command> --help`` imports that
module only. Modules whose name starts with ``_`` are helpers, not commands.

The CLI's table, ``infoview <command> --help``, and what ``launch`` does with
a command (one process per GPU or a single process; requeue and resume on
pre-emption, or not) all derive from these declarations.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Sequence

from infoview import schema
from infoview.config import DELETE, parse_overrides, read_yaml, resolve
from infoview.errors import InfoviewError
from infoview.utils.declarations import NOT_STATIC, Call, Decl
from infoview.utils.registry import Registry


@dataclass(frozen=True)
class Command:
    """What a command declares about itself.

    - ``help``: the one line ``infoview --help`` shows;
    - ``distributed``: runs one process per GPU under torch.distributed; a
      command that is not is launched as a single task, and asking ``launch``
      for more tasks or nodes is an error;
    - ``resume``: what makes a re-run continue where a stopped run left off:
      the ``key=value`` added to its arguments (``train.resume=auto``), ""
      when the same arguments do (the evaluators: a run goes on from the
      checkpoint in its own folder), or None when the command cannot resume:
      a pre-empted job of such a command is not requeued;
    - ``save_on_preempt``: called in the job's first task when SLURM signals
      pre-emption or the time limit; saves the run's state and returns a
      line saying what was saved (or None); :func:`save_fit_on_preempt` is
      the evaluators';
    - ``check_launch``: checks a job's effective config before anything is
      submitted (a pretraining run that could not resume, say);
    - ``positional``: keys filled by positional arguments (``prepare SRC OUT``);
    - ``open_sections``: sections whose keys the command checks itself;
    - ``section_resets``: ``{key: section}``, a key whose change starts its
      section afresh (``objective.name`` -> ``objective``);
    - ``renamed``: ``{old name: new name}`` of keys that changed their name: a
      config file or the command line may still give the old one, read as the
      new one with a one-line note naming it;
    - ``usage``: the usage line, when the default one does not fit.
    """

    help: str
    distributed: bool = False
    resume: str | None = None
    save_on_preempt: Callable[[], str | None] | None = None
    check_launch: Callable[[Any], None] | None = None
    positional: tuple[str, ...] = ()
    open_sections: tuple[str, ...] = ()
    section_resets: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    usage: str | None = None


def save_fit_on_preempt() -> str | None:
    """Every training command's ``save_on_preempt`` (pretrain, distill, linear, detect, segment): the ``fit`` run
    going on saves the step it last finished, from the first task alone (``training.fit_state.current_fit``);
    None when none runs (extracting, scoring)."""
    from infoview.training.fit_state import current_fit

    run = current_fit()
    path = run.save_now() if run is not None else None
    return f"pre-empted or out of time at step {run.step}; saved {path}" if path is not None else None


def _command_name(module: str) -> str:
    return module.rstrip("_").replace("_", "-")


def _describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    """A command's entry: the help of its ``COMMAND`` (read from the file, or from the module once imported)."""
    command = decl.attr("COMMAND", NOT_STATIC)
    text = command.kwargs.get("help", NOT_STATIC) if isinstance(command, Call) else getattr(command, "help", NOT_STATIC)
    return "", {"help": text}


# one module per command, read without importing it; evaluators (linear, knn, detect, segment) are commands too
_COMMANDS = Registry("command", listing="Commands", package=__name__, describe=_describe, module_name=_command_name,
                     error=InfoviewError)


def module_name(command: str) -> str:
    """``mi-bench`` -> ``infoview.commands.mi_bench``; ``list`` -> ``infoview.commands.list_``."""
    return _COMMANDS.entry(command).module


def names() -> list[str]:
    """Every command, sorted."""
    return sorted(_COMMANDS.names())


def command_help(name: str) -> str:
    """The one line ``infoview --help`` shows for command ``name`` (its module is not imported)."""
    return _COMMANDS.meta(name, "help")


def load_command(name: str) -> ModuleType:
    """The module of command ``name``; an unknown name is an error naming the nearest."""
    return _COMMANDS.get(name)


def spec(name: str) -> Command:
    """What command ``name`` declares (:class:`Command`)."""
    return load_command(name).COMMAND


def _split_config_flag(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``--config FILE`` / ``--config=FILE`` out of the arguments: (file or None, the rest)."""
    config_file, rest, i = None, [], 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                raise InfoviewError("--config needs a file name")
            config_file = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config_file, rest


def _overrides(name: str, command: Command, rest: list[str]) -> dict:
    """The ``key=value``, ``~key`` and positional arguments as one overrides dict."""
    deletions = [a for a in rest if a.startswith("~") and "=" not in a]  # ~key removes a key
    overrides_raw = [a for a in rest if "=" in a and not a.startswith("-")]
    positional = [a for a in rest if a not in overrides_raw and a not in deletions]
    flags = [a for a in positional if a.startswith("-")]
    if flags:
        raise InfoviewError(f"unknown option {flags[0]} for '{name}'; see `infoview {name} --help`")
    names_ = list(command.positional)
    if len(positional) > len(names_):
        extra = positional[len(names_):]
        raise InfoviewError(
            f"'{name}' takes {len(names_)} positional argument(s) "
            f"({' '.join(p.upper() for p in names_) or 'none'}), got extra: {' '.join(extra)}; "
            "settings are written key=value"
        )
    overrides = parse_overrides(overrides_raw)
    for key, value in zip(names_, positional):
        overrides[key] = value
    for item in deletions:
        if not item[1:].strip():
            raise InfoviewError(f"'{item}': write ~<key> to remove a key, e.g. ~objective.alpha")
        overrides[item[1:].strip()] = DELETE
    return overrides


def build_config(name: str, args: Sequence[str], keys: dict[str, Any] | None = None):
    """Parse a command's arguments into ``(module, effective config)``.

    ``keys``: more overrides, given as Python values rather than text (``{"train": {"epochs": 1}}`` or
    ``{"train.epochs": 1}``), applied after ``args``'s (``infoview.run``'s keyword arguments)."""
    module = load_command(name)
    command: Command = module.COMMAND
    config_file, rest = _split_config_flag(args)
    overrides = {**_overrides(name, command, rest), **(keys or {})}
    notes: list[str] = []
    file_cfg = read_yaml(config_file) if config_file else None
    cfg = resolve(
        schema.defaults(module.DEFAULTS),
        file_cfg,
        overrides,
        open_sections=command.open_sections,
        source=config_file or "",
        resets=command.section_resets or None,
        notes=notes,
        renamed=command.renamed,
    )
    if file_cfg and file_cfg.get("out_dir") and "out_dir" not in overrides:
        notes.append(f"out_dir={file_cfg['out_dir']} comes from --config {config_file}; a run already there is "
                     "resumed or refused, never overwritten: give out_dir=<folder> for a new one")
    for note in notes:
        print(f"infoview {name}: {note}", file=sys.stderr)
    missing = [p for p in command.positional if cfg.get(p) in (None, "")]
    if missing:
        raise InfoviewError(f"'{name}' needs {' '.join(m.upper() for m in missing)}; see `infoview {name} --help`")
    schema.check(cfg, module.DEFAULTS)  # choices and bounds, before any work
    return module, cfg
