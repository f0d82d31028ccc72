"""`infoview list <what>`: what a config may name, without provoking an error to find out.

  infoview list presets             the presets (infoview/configs/), with their first line
  infoview list objectives          every objective, its parameters and defaults, and what its .mi certifies
  infoview list methods             the pretraining methods, each with a demo-sized command to try it
  infoview list sources             the data source schemes, with the kinds of data each gives
  infoview list recipes             the view recipes (augment.recipe)
  infoview list archs [PATTERN]     timm encoder names matching PATTERN (a glob, default *), one per line
"""
from __future__ import annotations

from infoview.commands import Command
from infoview.config import CONFIG_DIR, did_you_mean, read_yaml
from infoview.errors import InfoviewError

USAGE = "usage: infoview list presets|objectives|methods|sources|recipes|archs [PATTERN]"
COMMAND = Command(help="List presets, objectives (with parameters), methods, data sources, view recipes or timm archs.",
                  usage=USAGE)


def presets() -> list[str]:
    """Each preset with the first line of its comment, and the out_dir it writes to unless given another."""
    rows = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = next((ln.lstrip("# ").strip() for ln in path.read_text(encoding="utf-8").splitlines()
                      if ln.startswith("#")), "")
        out_dir = read_yaml(path).get("out_dir")
        rows.append((path.stem, first + (f" [out_dir: {out_dir}]" if out_dir else "")))
    width = max((len(n) for n, _ in rows), default=0)
    return [f"{name:<{width}}  {first}" for name, first in rows]


def objectives() -> list[str]:
    """Read from the registry: the objectives' files are not imported (nor torch)."""
    from infoview.objectives.registry import available, objective_certifies, objective_params, objective_title

    lines = []
    for name in available():
        params = ", ".join(f"{k}={v!r}" for k, v in objective_params(name).items()) or "no parameters"
        title = objective_title(name).split(" (")[0]  # the name, without the citation
        lines.append(f"{name:<14} {title}\n{'':<14} parameters: {params}\n"
                     f"{'':<14} .mi: {objective_certifies(name)}")
    return lines


def methods() -> list[str]:
    """Each method, its first line, and a command that tries it on the demo's digits (the changes it needs)."""
    from infoview.pretrain.methods.registry import available_methods, method_demo, method_help

    lines = []
    for m in available_methods():
        demo = method_demo(m)
        lines.append(f"{m:<8} {method_help(m)}" + (f"\n{'':<8} try: {demo}" if demo else ""))
    return lines


def sources() -> list[str]:
    """One entry per scheme: how it is written, then each kind of data it gives and what it reads."""
    from infoview.data.registry import schemes

    by_name: dict[str, list] = {}
    for s in schemes():
        by_name.setdefault(s.name, []).append(s)
    width = max((len(group[0].usage) for group in by_name.values()), default=0)
    kind_width = max((len(s.kind) for s in schemes()), default=0)
    entries = []
    for group in by_name.values():
        lines = [f"{group[0].usage if i == 0 else '':<{width}}  {s.kind:<{kind_width}}  {s.help}"
                 for i, s in enumerate(group)]
        entries.append("\n".join(lines))
    return entries


def recipes() -> list[str]:
    from infoview.augment.recipes import available_recipes  # read from the recipes' files

    return available_recipes()


def archs(pattern: str = "*") -> list[str]:
    import timm

    names = timm.list_models(pattern)
    if not names:
        raise InfoviewError(f"no timm model matches '{pattern}'; try a glob such as 'resnet*' or 'vit_small*'")
    return names


LISTS = {"presets": presets, "objectives": objectives, "methods": methods, "sources": sources,
         "recipes": recipes, "archs": archs}


def main(args: list[str]) -> None:
    if not args:
        raise InfoviewError(f"say what to list; {USAGE}")
    what, rest = args[0], args[1:]
    if what not in LISTS:
        raise InfoviewError(f"cannot list '{what}'" + did_you_mean(what, LISTS) + f"; {USAGE}")
    if rest and what != "archs":
        raise InfoviewError(f"'infoview list {what}' takes no argument; {USAGE}")
    if len(rest) > 1:
        raise InfoviewError(f"'infoview list archs' takes one pattern, got {len(rest)}; {USAGE}")
    for line in LISTS[what](*rest):
        print(line)
