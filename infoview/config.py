"""Configuration: defaults per command, a YAML file, then ``key=value`` overrides.

Every command declares its defaults as a nested dict. A YAML file given with
``--config`` and the command-line overrides (dotted keys) are merged on top,
in that order. A key that is not in the defaults is an error that names the
nearest valid key; a value of the wrong type is an error that names the key
and the type expected. Sections named in ``open_sections`` take any key: the
command checks those itself (an objective's own keys, for instance).

Changing a key named in ``resets`` starts its section afresh: with
``{"objective.name": "objective"}``, a command line that switches a preset's
``ml_cpc`` to ``ring`` drops the preset's ``objective.alpha`` (and says so).
A key is removed with ``~key`` on the command line (a fixed key goes back to
its default), an open-section key also with ``key=null``, and ``section={}``
empties an open section. Duplicate keys in a YAML file are an error.
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
from infoview.utils.provenance import provenance

#: the presets (``--config demo``), shipped inside the package so that every install has them
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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


DELETE = object()  #: an override value that removes its key (``~key`` on the command line)


def _unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    msg = f"unknown config key '{key}' ({where})" + did_you_mean(key, valid)
    section = key.rsplit(".", 1)[0] + "." if "." in key else None
    near = [v for v in valid if section and v.startswith(section)] or difflib.get_close_matches(key, valid, 6, 0.3)
    near = near[:8]
    shown = f" Nearby keys: {', '.join(near)}." if near else ""
    return ConfigError(msg + shown + f" `--help` lists all {len(valid)} keys with their defaults")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as a YAML scalar or list."""
    try:
        value = load_yaml(text, f"the value {text[:40]!r}") if text.strip() else ""
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


class _Duplicate(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names a key twice (YAML itself keeps the last silently)."""


def _unique_mapping(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _Duplicate(f"key '{key}' appears twice (lines {seen[key]} and {line}); keep one")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


#: the most nodes a YAML document may hold once its aliases are expanded (a config holds a few hundred)
MAX_YAML_NODES = 100_000


def _yaml_children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expanded_size(root, where: str) -> None:
    """Refuse a composed YAML document whose aliases expand it past :data:`MAX_YAML_NODES` nodes, or that refers
    to itself: an alias bomb of 1 KB would otherwise expand into billions of values in whatever reads it.

    Each node's expanded size is counted once (an alias is the node it names), so this takes time linear in
    the file, iteratively (no recursion limit)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose subtree is being counted: an alias to one of them is a loop
    stack = [(root, False)]
    while stack:
        node, counted = stack.pop()
        if counted:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _yaml_children(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(f"{where}: its aliases expand the value at line {line} past {MAX_YAML_NODES:,} "
                                  "values (an alias bomb?); write the values out or use fewer aliases")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise ConfigError(f"{where}: an alias at line {node.start_mark.line + 1} refers to a value that "
                              "holds it (a loop); a config holds plain values")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _yaml_children(node) if id(child) not in sizes)


def load_yaml(text: str, where: str):
    """``text`` read with the safe loader, refusing a key named twice in a mapping and aliases that expand the
    document past :data:`MAX_YAML_NODES` nodes, checked before anything is built (ConfigErrors naming
    ``where``); malformed YAML is yaml's own YAMLError."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, where)
        return loader.construct_document(node)
    except _Duplicate as exc:
        raise ConfigError(f"{where}: {exc}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config with the safe loader; errors name the file."""
    p = Path(path)
    if not p.exists() and not p.suffix and (CONFIG_DIR / f"{p}.yaml").exists():
        p = CONFIG_DIR / f"{p}.yaml"  # ``--config demo`` finds infoview/configs/demo.yaml
    if not p.is_file():
        presets = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
        hint = f" Presets: {', '.join(presets)}" if presets else ""
        if p.stem in presets:  # configs/demo.yaml, the presets' folder before they moved into the package
            hint = f" The preset of that name is --config {p.stem}." + hint
        raise ConfigError(f"config file '{path}' does not exist.{hint}")
    try:
        data = load_yaml(p.read_text(encoding="utf-8"), f"config file '{p}'")
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
    data.pop("_provenance", None)  # written by save_config; not a setting
    return data


def rename_keys(layer: Mapping[str, Any], renamed: Mapping[str, str], where: str,
                notes: list[str] | None = None) -> dict[str, Any]:
    """``layer`` (dotted keys; a section may be a dict) with every old name of ``renamed`` (``{old: new}``)
    given its new name, and one note per old name ("train.lr is now optim.lr (in x)"). A layer that gives a
    key under both names is a ConfigError."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        inner = isinstance(value, Mapping) and value and any(old.startswith(key + ".") for old in renamed)
        for k, v in (flatten(value, key + ".").items() if inner else [(key, value)]):
            new = renamed.get(k)
            if new is not None:
                if new in layer or new in out:
                    raise ConfigError(f"{k} and {new} are one key ({where}): {k} is its old name; give {new} only")
                if notes is not None:
                    notes.append(f"{k} is now {new} ({where}); read as {new}")
                k = new
            out[k] = v
    return out


def renamed_tree(tree: Mapping, renamed: Mapping[str, str], where: str, notes: list[str] | None = None) -> dict:
    """A saved config (a checkpoint's, a run's config.yaml) written with old key names, in today's names."""
    if not any(old in (flat := flatten(tree)) for old in renamed):
        return dict(tree)
    return _nested(rename_keys(flat, renamed, where, notes))


def resolve(
    defaults: Mapping,
    file_cfg: Mapping | None = None,
    overrides: Mapping[str, Any] | None = None,
    open_sections: Iterable[str] = (),
    source: str = "",
    resets: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
    renamed: Mapping[str, str] | None = None,
) -> DictConfig:
    """Merge ``defaults`` <- ``file_cfg`` <- ``overrides`` with checked keys.

    ``resets``: ``{key: section}``; a layer that changes ``key`` drops what
    earlier layers put in ``section`` (open keys are removed, fixed keys go
    back to their defaults). What is dropped is appended to ``notes``.
    ``renamed``: ``{old name: new name}`` of keys that changed their name;
    either layer may give the old one, which is read as the new one with a
    note (:func:`rename_keys`).
    """
    merge = _Merge(defaults, open_sections, resets, notes)
    renamed = renamed or {}
    if file_cfg:
        where = f"in {source or 'the config file'}"
        merge.layer(rename_keys(flatten(file_cfg), renamed, where, notes), where)
    if overrides:
        merge.layer(rename_keys(dict(overrides), renamed, "on the command line", notes), "on the command line")
    return _tree(merge.merged)


class _Merge:
    """One :func:`resolve`: the defaults' flat keys, the keys merged so far, and the layers' rules."""

    def __init__(self, defaults: Mapping, open_sections: Iterable[str], resets: Mapping[str, str] | None,
                 notes: list[str] | None):
        self.open_sections = tuple(open_sections)
        self.resets = dict(resets or {})
        self.notes = notes
        self.flat = flatten(defaults)
        self.sections = {k.rsplit(".", 1)[0] for k in self.flat if "." in k}
        self.merged = copy.deepcopy(self.flat)  # the tree is built from this: never in the caller's defaults

    def is_open(self, key: str) -> bool:
        return any(key.startswith(s + ".") for s in self.open_sections)

    def drop(self, section: str, keep: str = "") -> list[str]:
        """Remove what ``section`` holds (open keys) or put it back to the defaults (fixed keys)."""
        merged, flat = self.merged, self.flat
        dropped = []
        for k in [k for k in merged if k.startswith(section + ".") and k != keep]:
            if k in flat:
                if merged[k] != flat[k]:
                    dropped.append(k)
                merged[k] = copy.deepcopy(flat[k])
            else:
                dropped.append(k)
                del merged[k]
        if section in flat:  # an open section that is itself a key ({} by default)
            merged[section] = copy.deepcopy(flat[section])
        return dropped

    def layer(self, layer: Mapping[str, Any], where: str) -> None:
        """Merge one layer (the file's keys, or the command line's), ``where`` naming it in errors and notes."""
        # a changed reset key first: it decides what the rest of this layer lands in
        for key, section in self.resets.items():
            if key in layer and layer[key] is not DELETE and layer[key] != self.merged.get(key):
                dropped = self.drop(section, keep=key)
                if dropped and self.notes is not None:
                    self.notes.append(f"{key}={layer[key]} ({where}) starts {section} afresh: dropped "
                                      + ", ".join(dropped))
        for key, value in layer.items():
            if value is DELETE or (value is None and (self.is_open(key) or key in self.open_sections)):
                self._remove(key, where)
            else:
                self._set(key, value, where)

    def _remove(self, key: str, where: str) -> None:
        """``~key`` (or ``key=null`` in an open section): back to the default, or gone."""
        if key in self.flat and key not in self.open_sections:
            self.merged[key] = copy.deepcopy(self.flat[key])
        elif self.is_open(key) or key in self.open_sections:  # an open section (~model.kwargs) empties
            self.merged.pop(key, None)
            self.drop(key)
        else:
            raise _unknown_key_error(key, self.flat, where)

    def _set(self, key: str, value: Any, where: str) -> None:
        flat, merged = self.flat, self.merged
        if key in flat:
            if key in self.open_sections and isinstance(value, Mapping):
                self.drop(key)  # section={...} replaces the section
                for sub, v in flatten(value, key + ".").items():
                    merged[sub] = v
                return
            merged[key] = _check_type(key, flat[key], value)
        elif self.is_open(key) or key in self.open_sections:
            merged[key] = value
        elif isinstance(value, Mapping) and key in self.sections:
            for sub, v in flatten(value, key + ".").items():
                if sub not in flat and not self.is_open(sub):
                    raise _unknown_key_error(sub, flat, where)
                merged[sub] = _check_type(sub, flat.get(sub), v)
        else:
            raise _unknown_key_error(key, flat, where)


def _tree(merged: Mapping[str, Any]) -> DictConfig:
    """Flat dotted keys -> the nested config."""
    return OmegaConf.create(_nested(merged))


def _nested(merged: Mapping[str, Any]) -> dict:
    """Flat dotted keys -> nested dicts."""
    tree: dict = {}
    for key, value in merged.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with a value at '{part}'")
        if isinstance(node.get(parts[-1]), dict) and value == {}:
            continue  # an open section's {} beside keys inside it: the keys win
        node[parts[-1]] = value
    return tree


def save_config(cfg: DictConfig | Mapping, path: str | os.PathLike, extra: Mapping | None = None) -> Path:
    """Write the effective config as YAML (atomically), with provenance."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    header = {"_provenance": {**provenance(), **(extra or {})}}
    text = yaml.safe_dump({**data, **header}, sort_keys=False)
    path = Path(path)
    atomic_write_text(path, text)
    return path
