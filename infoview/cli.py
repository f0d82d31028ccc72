"""``infoview <command> [--config FILE] [key=value ...]``: one thin entry point.

Each command lives in its own module, which exposes:

- ``DEFAULTS``: a nested dict of every key the command accepts, with defaults;
- ``run(cfg)``: does the work; may return a dict that is printed as JSON;
- optionally ``POSITIONAL``: names of keys filled by positional arguments
  (``infoview prepare SRC OUT`` sets ``src`` and ``out``);
- optionally ``OPEN_SECTIONS``: sections whose keys the command checks itself;
- optionally ``SECTION_RESETS``: ``{key: section}``, a key whose change starts
  its section afresh (``objective.name`` -> ``objective``);
- optionally ``main(args)``: the command parses its own arguments (``launch``,
  which passes most of them on to another command).

The table below maps a command to its module and its one-line help, so that
``infoview --help`` does not import torch. A new command is one line here.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Sequence

from omegaconf import OmegaConf

from infoview.config import DELETE, did_you_mean, parse_overrides, read_yaml, resolve
from infoview.errors import InfoviewError, Interrupted

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("infoview.data.prepare", "Write an image source (digits, folder:..., cifar10:...) to an ffcv .beton file."),
    "pretrain": (
        "infoview.pretrain.engine",
        "Pretrain an encoder without labels (simclr or moco, any objective); checkpoints and resumes.",
    ),
    "export": (
        "infoview.models.export",
        "Export a checkpoint's backbone: model.safetensors (timm key names) + config.json.",
    ),
    "knn": (
        "infoview.eval.knn_eval",
        "Weighted kNN accuracy of a frozen encoder (k = 200, temperature 0.07 by default).",
    ),
    "detect": (
        "infoview.eval.detection",
        "Fine-tune Mask/Faster R-CNN with FPN on a backbone; COCO box and mask AP (pycocotools).",
    ),
    "segment": (
        "infoview.eval.segmentation",
        "Train an FCN/DeepLabV3 head on a backbone; mIoU and pixel accuracy, with a PNG of predictions.",
    ),
    "linear": (
        "infoview.eval.linear_eval",
        "Linear probe of a frozen encoder (a checkpoint, or random:<...> for the baseline): top-1/top-5.",
    ),
    "launch": (
        "infoview.launch.command",
        "Run any command as a SLURM job (or locally) via submitit; requeues and resumes on pre-emption.",
    ),
    "mi-bench": (
        "infoview.eval.mi_bench",
        "Train critics on the Gaussian MI staircase and compare what each bound certifies.",
    ),
    "list": (
        "infoview.listing",
        "List presets, objectives (with parameters), methods, data sources, view recipes or timm archs.",
    ),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: infoview <command> [--config FILE] [key=value ...]",
        "",
        "Self-supervised pretraining around mutual-information bounds.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    lines += [
        "",
        "`infoview <command> --help` (or `infoview help <command>`) lists the command's keys and",
        "their defaults; `infoview list presets|objectives|methods|sources|recipes|archs` lists names.",
        "Keys are dotted (optim.lr=0.1); --config reads a YAML file (a path, or a preset",
        "name from configs/) and key=value arguments override it.",
    ]
    return "\n".join(lines)


def load_command(name: str):
    if name not in COMMANDS:
        msg = f"unknown command '{name}'" + did_you_mean(name, COMMANDS)
        raise InfoviewError(msg + " Commands: " + ", ".join(sorted(COMMANDS)))
    return importlib.import_module(COMMANDS[name][0])


def _command_help(name: str, module) -> str:
    doc = (module.__doc__ or COMMANDS[name][1]).strip()
    positional = " ".join(p.upper() for p in getattr(module, "POSITIONAL", ()))
    head = getattr(module, "USAGE", None) or (
        f"usage: infoview {name} {positional + ' ' if positional else ''}[--config FILE] [key=value ...]"
    )
    if not hasattr(module, "DEFAULTS"):  # a command without keys (list)
        return f"{head}\n\n{doc}"
    keys = OmegaConf.to_yaml(OmegaConf.create(module.DEFAULTS)).rstrip()
    return f"{head}\n\n{doc}\n\nkeys and defaults:\n" + "\n".join("  " + l for l in keys.splitlines())


def build_config(name: str, args: Sequence[str]):
    """Parse a command's arguments into its effective config."""
    module = load_command(name)
    config_file = None
    rest: list[str] = []
    args = list(args)
    i = 0
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
    positional_names = list(getattr(module, "POSITIONAL", ()))
    deletions = [a for a in rest if a.startswith("~") and "=" not in a]  # ~key removes a key
    overrides_raw = [a for a in rest if "=" in a and not a.startswith("-")]
    positional = [a for a in rest if a not in overrides_raw and a not in deletions]
    flags = [a for a in positional if a.startswith("-")]
    if flags:
        raise InfoviewError(f"unknown option {flags[0]} for '{name}'; see `infoview {name} --help`")
    if len(positional) > len(positional_names):
        extra = positional[len(positional_names):]
        raise InfoviewError(
            f"'{name}' takes {len(positional_names)} positional argument(s) "
            f"({' '.join(p.upper() for p in positional_names) or 'none'}), got extra: {' '.join(extra)}; "
            "settings are written key=value"
        )
    overrides = parse_overrides(overrides_raw)
    for key, value in zip(positional_names, positional):
        overrides[key] = value
    for item in deletions:
        if not item[1:].strip():
            raise InfoviewError(f"'{item}': write ~<key> to remove a key, e.g. ~objective.alpha")
        overrides[item[1:].strip()] = DELETE
    file_cfg = read_yaml(config_file) if config_file else None
    notes: list[str] = []
    cfg = resolve(
        module.DEFAULTS,
        file_cfg,
        overrides,
        open_sections=getattr(module, "OPEN_SECTIONS", ()),
        source=config_file or "",
        resets=getattr(module, "SECTION_RESETS", None),
        notes=notes,
    )
    for note in notes:
        print(f"infoview {name}: {note}", file=sys.stderr)
    missing = [p for p in positional_names if cfg.get(p) in (None, "")]
    if missing:
        raise InfoviewError(
            f"'{name}' needs {' '.join(m.upper() for m in missing)}; see `infoview {name} --help`"
        )
    return module, cfg


def _print(text: str) -> None:
    """Print, and stay quiet when the reader has gone (``infoview --help | head``)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the closed pipe


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"] and len(argv) > 1:
        argv = [argv[1], "--help"]  # `infoview help pretrain` is `infoview pretrain --help`
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from infoview import __version__

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
