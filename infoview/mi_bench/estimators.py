"""The `estimators` list of `infoview mi-bench`: entries read and checked against the objective registry, then built."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from infoview.errors import ConfigError, InfoviewError
from infoview.objectives import build, objective_params

# estimators whose plain entry takes a value from a top-level key
_TOP_LEVEL_PARAMS = {"ml_cpc": ("alpha",)}


@dataclass
class EstimatorSpec:
    key: str  # the name in results.json: "infonce", "ml_cpc(alpha=0.1)"
    objective: str  # the registry name
    params: dict[str, Any] = field(default_factory=dict)  # given in the entry
    built_with: dict[str, Any] = field(default_factory=dict)  # everything passed to build()

    @property
    def label(self) -> str:
        """The key, plus the parameters a plain entry took from top-level keys (for the plot)."""
        extra = {k: v for k, v in self.built_with.items() if k not in self.params}
        if not extra:
            return self.key
        return f"{self.key} (" + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()) + ")"


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _fmt_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _parse_entry(entry: Any) -> tuple[str, dict[str, Any], bool]:
    """One estimators entry -> (objective name, parameters, had parameters)."""
    if isinstance(entry, dict):
        # from a YAML file: {name: ml_cpc, alpha: 0.1} or {ml_cpc: {alpha: 0.1}}
        if "name" in entry:
            params = {k: v for k, v in entry.items() if k != "name"}
            return str(entry["name"]), params, bool(params)
        if len(entry) == 1:
            (name, params), = entry.items()
            params = dict(params or {})
            return str(name), params, bool(params)
        raise ConfigError(f"estimators: cannot read entry {entry!r}; write it as name:key=value")
    if not isinstance(entry, str):
        raise ConfigError(f"estimators: expected objective names, got {entry!r}")
    text = entry.strip()
    m = re.fullmatch(r"([\w.-]+)\s*\((.*)\)", text)
    if m:
        name, rest = m.group(1), [p for p in re.split(r"[,:]", m.group(2)) if p.strip()]
    else:
        name, *rest = text.split(":")
        rest = [p for p in rest if p.strip()]
    params: dict[str, Any] = {}
    for item in rest:
        if "=" not in item:
            raise ConfigError(
                f"estimators: cannot read '{item}' in '{entry}'; parameters are written "
                "name:key=value, e.g. ml_cpc:alpha=0.1"
            )
        k, v = item.split("=", 1)
        params[k.strip()] = _parse_scalar(v)
    name = name.strip()
    if not name:
        raise ConfigError(f"estimators: entry '{entry}' has no objective name")
    return name, params, bool(params)


def parse_estimators(entries: Sequence[Any], top_level: dict[str, Any] | None = None) -> list[EstimatorSpec]:
    """Read the `estimators` list; check every name and parameter against the registry."""

    top_level = top_level or {}
    if isinstance(entries, str):
        entries = [e for e in entries.split(",") if e.strip()]
    if not entries:
        raise ConfigError("estimators is empty; name at least one objective, e.g. estimators=infonce")
    specs: list[EstimatorSpec] = []
    seen: set[str] = set()
    for entry in entries:
        name, params, had_params = _parse_entry(entry)
        try:
            accepted = objective_params(name)  # names the nearest objective when unknown
        except ConfigError as exc:
            raise ConfigError(f"estimators: {exc}") from None
        for k in params:
            if k not in accepted:
                raise ConfigError(
                    f"estimators: '{name}' has no parameter '{k}'; its parameters: "
                    + (", ".join(accepted) or "none")
                )
        built = dict(params)
        for k in _TOP_LEVEL_PARAMS.get(name, ()):
            if k not in built and top_level.get(k) is not None and k in accepted:
                built[k] = top_level[k]
        key = name
        if had_params:
            key = f"{name}(" + ",".join(f"{k}={_fmt_value(v)}" for k, v in params.items()) + ")"
        if key in seen:
            raise ConfigError(f"estimators: '{key}' is listed twice")
        seen.add(key)
        specs.append(EstimatorSpec(key=key, objective=name, params=params, built_with=built))
    return specs


def build_objectives(specs: Sequence[EstimatorSpec]) -> list:
    objs = []
    for spec in specs:
        try:
            objs.append(build(spec.objective, **spec.built_with))
        except InfoviewError as exc:
            raise ConfigError(f"estimators: {spec.key}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"estimators: cannot build '{spec.key}': {exc}") from None
    return objs

