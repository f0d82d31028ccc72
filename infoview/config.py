"""Configuration: defaults per command, a YAML file, then ``key=value`` overrides.

Every command declares its defaults as a nested dict. A YAML file given with
``--config`` and the command-line overrides (dotted keys) are merged on top,
in that order. A key that is not in the defaults is an error that names the
nearest valid key; a value of the wrong type is an error that names the key
and the type expected. Sections named in ``open_sections`` take any key: the
command checks those itself (an objective's own keys, for instance).
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from infoview.errors import ConfigError
from infoview.utils.io import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty dict stays a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def nearest(key: str, valid: Iterable[str]) -> str | None:
    valid = list(valid)
    prefixed = [v for v in valid if v.startswith(key) or v.rsplit(".", 1)[-1].startswith(key)]
    if len(prefixed) == 1:  # "tau" -> "tau_plus", "epoch" -> "train.epochs"
        return prefixed[0]
    hits = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not hits:
        # a misspelt leaf under a right section ("optim.lrr") or a right leaf
        # under no section ("lr"): compare the last component too
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {v.rsplit(".", 1)[-1]: v for v in valid}
        leaf_hits = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        hits = [by_leaf[leaf_hits[0]]] if leaf_hits else []
    return hits[0] if hits else None


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest valid name, or ``""`` when none is near."""
    hint = nearest(str(name), valid)
    return f"; did you mean '{hint}'?" if hint else ""


def _unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    msg = f"unknown config key '{key}' ({where})" + did_you_mean(key, valid)
    return ConfigError(msg + " Valid keys: " + ", ".join(valid))


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as a YAML scalar or list."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as text; a user means the number
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"expected key=value, got '{item}'")
        out[key] = parse_value(value)
    return out


def _check_type(key: str, default: Any, value: Any) -> Any:
    """Coerce ``value`` to the type of ``default`` where that is lossless."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            return [parse_value(v) for v in value.split(",") if v.strip()]
        return [value]
    return value


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config with the safe loader; errors name the file."""
    p = Path(path)
    if not p.exists() and not p.suffix and (CONFIG_DIR / f"{p}.yaml").exists():
        p = CONFIG_DIR / f"{p}.yaml"  # ``--config demo`` finds configs/demo.yaml
    if not p.is_file():
        presets = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
        hint = f" Presets: {', '.join(presets)}" if presets else ""
        raise ConfigError(f"config file '{path}' does not exist.{hint}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
    data.pop("_provenance", None)  # written by save_config; not a setting
    return data


def resolve(
    defaults: Mapping,
    file_cfg: Mapping | None = None,
    overrides: Mapping[str, Any] | None = None,
    open_sections: Iterable[str] = (),
    source: str = "",
) -> DictConfig:
    """Merge ``defaults`` <- ``file_cfg`` <- ``overrides`` with checked keys."""
    open_sections = tuple(open_sections)
    flat = flatten(defaults)
    sections = {k.rsplit(".", 1)[0] for k in flat if "." in k}

    def is_open(key: str) -> bool:
        return any(key.startswith(s + ".") for s in open_sections)

    merged = copy.deepcopy(flat)  # the tree below is built in place: never in the caller's defaults
    layers = []
    if file_cfg:
        layers.append((flatten(file_cfg), f"in {source or 'the config file'}"))
    if overrides:
        layers.append((dict(overrides), "on the command line"))
    for layer, where in layers:
        for key, value in layer.items():
            if key in flat:
                merged[key] = _check_type(key, flat[key], value)
            elif is_open(key) or key in open_sections:
                merged[key] = value
            elif isinstance(value, Mapping) and key in sections:
                for sub, v in flatten(value, key + ".").items():
                    if sub not in flat and not is_open(sub):
                        raise _unknown_key_error(sub, flat, where)
                    merged[sub] = _check_type(sub, flat.get(sub), v)
            else:
                raise _unknown_key_error(key, flat, where)
    tree: dict = {}
    for key, value in merged.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with a value at '{part}'")
        node[parts[-1]] = value
    return OmegaConf.create(tree)


def save_config(cfg: DictConfig | Mapping, path: str | os.PathLike, extra: Mapping | None = None) -> Path:
    """Write the effective config as YAML (atomically), with provenance."""
    from infoview.utils.provenance import provenance

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    header = {"_provenance": {**provenance(), **(extra or {})}}
    text = yaml.safe_dump({**data, **header}, sort_keys=False)
    path = Path(path)
    atomic_write_text(path, text)
    return path
