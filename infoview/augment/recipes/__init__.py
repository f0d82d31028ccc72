"""View recipes as data: which ops a view gets, with what parameters.

Each recipe is one module of this package (``simclr.py``, ``mocov2.py``,
``byol.py``, ``multicrop.py``): its docstring's first line says what it is,
its ``RECIPE`` holds its ops. A new recipe is one new file here, plus its
test: the registry reads the files without importing them
(``infoview list recipes``, the choices of ``augment.recipe``).

A recipe is a plain dict of ``op -> {param: value}``. Ops a recipe leaves out
keep their defaults from :data:`OPS` (which are all "off": probability 0 or no
change), so a recipe names only what it turns on. Two optional sections make
views differ from one another:

``views``
    a list of partial op dicts; view ``i`` takes entry ``i % len(views)`` on
    top of the shared ops (BYOL's asymmetric blur and solarize).
``local``
    multi-crop's small crops: ``num`` and ``size_frac`` (the crop's side as a
    fraction of ``size``) plus partial op dicts for those crops only.

Overrides edit the recipe at a path, either nested (``{"jitter": {"p": 0.5}}``)
or dotted (``{"jitter.p": 0.5}``, ``{"views.1.solarize.p": 0.3}``,
``{"local.num": 8}``). An override of a shared op is an error when every view
sets that parameter itself (it would change nothing); override the per-view
entry instead. Unknown recipes, ops and parameters are errors that list the
valid names.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from infoview.config import did_you_mean
from infoview.errors import ConfigError
from infoview.utils.declarations import NOT_STATIC, Decl
from infoview.utils.registry import Registry, first_line

# Every op with every parameter and its default. Probabilities are per sample.
OPS: dict[str, dict[str, Any]] = {
    # Random resized crop: area fraction in `scale`, aspect ratio (w/h) drawn
    # log-uniformly in `ratio`, then bilinear resize to the view's size.
    "crop": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]},
    "flip": {"p": 0.0},
    # Factors as torchvision's ColorJitter: brightness/contrast/saturation x
    # draw from [1-x, 1+x] (or give [lo, hi]), hue from [-x, x] turns.
    "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "p": 0.0},
    "grayscale": {"p": 0.0},
    # Gaussian blur with sigma drawn per sample. The kernel spans
    # `kernel_frac` of the view's side (odd, at least 3); blur is left out of
    # views smaller than `min_size` (SimCLR does not blur 32 px CIFAR views).
    "blur": {"p": 0.0, "sigma": [0.1, 2.0], "kernel_frac": 0.1, "min_size": 0},
    # Pixels >= threshold (in [0, 1] units) become 1 - pixel.
    "solarize": {"p": 0.0, "threshold": 0.5},
}
OP_ORDER = tuple(OPS)  # the order ops run in, whatever order a dict gives them
LOCAL_KEYS = {"num": 6, "size_frac": 3 / 7}

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # per-pixel statistics of the 50,000 training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _describe(decl: Decl) -> tuple[str, dict[str, Any]]:
    return first_line(decl.doc), {"recipe": decl.attr("RECIPE", NOT_STATIC)}


# the published ones first, in the order they appeared; any other by name
_RECIPES = Registry("view recipe", package=__name__, describe=_describe, first=("simclr", "mocov2", "byol", "multicrop"))


def recipe_names() -> list[str]:
    """The recipes, in listing order (simclr first; nothing imported)."""
    return _RECIPES.names()


def available_recipes() -> list[str]:
    """Names accepted by ``build_views``."""
    return sorted(recipe_names())


def recipe_ops(name: str) -> dict[str, Any]:
    """Recipe ``name``'s ops (a copy); an unknown name is a ConfigError naming the valid ones."""
    if name not in recipe_names():
        raise _unknown("view recipe", name, recipe_names(), "")
    return copy.deepcopy(_RECIPES.get(name).RECIPE)


def __getattr__(name: str):
    """``RECIPES``: ``{name: ops}`` of every recipe (read when asked: each is a module of this package)."""
    if name != "RECIPES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return {n: recipe_ops(n) for n in recipe_names()}


@dataclass(frozen=True)
class ViewSpec:
    """One view's resolved ops: every op with every parameter, checked."""

    size: int
    ops: dict[str, dict[str, Any]]
    local: bool = False


def _unknown(kind: str, name: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    msg = f"unknown {kind} '{name}' {where}" + did_you_mean(name, valid)
    return ConfigError(msg + "; valid: " + ", ".join(valid))


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": {"d": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": 2}}``.

    List positions are written as keys (``views.1``) and stay strings here.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{key}' conflicts with another override of '{part}'")
            node = nxt
        leaf = parts[-1]
        if isinstance(value, Mapping):
            value = _nest(value)
            if isinstance(node.get(leaf), dict):
                node[leaf] = _merge(node[leaf], value)
                continue
        node[leaf] = value
    return out


def _merge(base: dict, top: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_ops(ops: Mapping[str, Any], where: str, extra: Iterable[str] = ()) -> None:
    extra = set(extra)
    for op, params in ops.items():
        if op in extra:
            continue
        if op not in OPS:
            raise _unknown("op", op, list(OPS) + sorted(extra), where)
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"op '{op}' {where} must be a mapping of parameters "
                f"({', '.join(OPS[op])}), got {params!r}"
            )
        for name in params:
            if name not in OPS[op]:
                raise _unknown("parameter", name, OPS[op], f"for op '{op}' {where}")


def _apply_overrides(recipe: dict, overrides: Mapping[str, Any], name: str) -> dict:
    nested = _nest(overrides)
    where = f"in overrides of recipe '{name}'"
    _check_ops(nested, where, extra=("views", "local"))
    out = copy.deepcopy(recipe)
    per_view = out.get("views")

    if "views" in nested:
        if not per_view:
            raise ConfigError(f"recipe '{name}' has no per-view section; override the shared ops instead")
        views = nested["views"]
        if not isinstance(views, Mapping):
            raise ConfigError(f"override 'views' {where} must address one view, as views.<index>.<op>.<param>")
        for idx, ops in views.items():
            try:
                i = int(idx)
                if not 0 <= i < len(per_view):
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"override 'views.{idx}' {where}: view index must be 0..{len(per_view) - 1}"
                ) from None
            if not isinstance(ops, Mapping):
                raise ConfigError(f"override 'views.{idx}' {where} must be a mapping of ops")
            _check_ops(ops, f"in override 'views.{idx}'")
            per_view[i] = _merge(per_view[i], ops)

    if "local" in nested:
        if "local" not in out:
            raise ConfigError(f"recipe '{name}' has no local crops; 'local' overrides apply to multicrop only")
        local = nested["local"]
        if not isinstance(local, Mapping):
            raise ConfigError(f"override 'local' {where} must be a mapping")
        _check_ops(local, "in override 'local'", extra=LOCAL_KEYS)
        out["local"] = _merge(out["local"], local)

    for op, params in nested.items():
        if op in ("views", "local"):
            continue
        for param in params:
            # An override that every view shadows would silently do nothing.
            if per_view and all(param in v.get(op, {}) for v in per_view):
                raise ConfigError(
                    f"override '{op}.{param}' has no effect: recipe '{name}' sets it per view; "
                    + " / ".join(f"views.{i}.{op}.{param}" for i in range(len(per_view)))
                    + " instead"
                )
        out[op] = _merge(out.get(op, {}), params)
    return out


def _pair(op: str, name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{op}.{name} must be a pair [low, high], got {value!r}") from None
    if not lo <= hi:
        raise ConfigError(f"{op}.{name} must have low <= high, got {value!r}")
    return lo, hi


def _prob(op: str, value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{op}.p must be a probability in [0, 1], got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{op}.p must be a probability in [0, 1], got {value!r}")
    return p


def _factor_range(name: str, value: Any, centre: float) -> tuple[float, float]:
    """torchvision's convention: x -> [centre - x, centre + x]; a pair is taken as given."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"jitter.{name} must be >= 0, got {value!r}")
        lo, hi = centre - float(value), centre + float(value)
        return (max(lo, 0.0), hi) if centre == 1.0 else (lo, hi)
    return _pair("jitter", name, value)


def _check_values(ops: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate and normalise one view's op parameters (pairs as tuples, ranges resolved)."""
    out = copy.deepcopy(ops)
    lo, hi = _pair("crop", "scale", out["crop"]["scale"])
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"crop.scale must satisfy 0 < low <= high <= 1, got {out['crop']['scale']!r}")
    out["crop"]["scale"] = (lo, hi)
    lo, hi = _pair("crop", "ratio", out["crop"]["ratio"])
    if lo <= 0:
        raise ConfigError(f"crop.ratio must be positive, got {out['crop']['ratio']!r}")
    out["crop"]["ratio"] = (lo, hi)
    for op in ("flip", "jitter", "grayscale", "blur", "solarize"):
        out[op]["p"] = _prob(op, out[op]["p"])
    jit = out["jitter"]
    for name in ("brightness", "contrast", "saturation"):
        jit[name] = _factor_range(name, jit[name], 1.0)
        if jit[name][0] < 0:
            raise ConfigError(f"jitter.{name} range must be non-negative, got {jit[name]!r}")
    jit["hue"] = _factor_range("hue", jit["hue"], 0.0)
    if not -0.5 <= jit["hue"][0] <= jit["hue"][1] <= 0.5:
        raise ConfigError(f"jitter.hue must lie within [-0.5, 0.5] turns, got {jit['hue']!r}")
    blur = out["blur"]
    blur["sigma"] = _pair("blur", "sigma", blur["sigma"])
    if blur["sigma"][0] <= 0:
        raise ConfigError(f"blur.sigma must be positive, got {blur['sigma']!r}")
    if not isinstance(blur["kernel_frac"], (int, float)) or not 0 < blur["kernel_frac"] <= 1:
        raise ConfigError(f"blur.kernel_frac must be in (0, 1], got {blur['kernel_frac']!r}")
    try:
        out["solarize"]["threshold"] = float(out["solarize"]["threshold"])
        blur["min_size"] = int(blur["min_size"])
        blur["kernel_frac"] = float(blur["kernel_frac"])
    except (TypeError, ValueError):
        raise ConfigError(
            "solarize.threshold, blur.min_size and blur.kernel_frac must be numbers, got "
            f"{out['solarize']['threshold']!r}, {blur['min_size']!r}, {blur['kernel_frac']!r}"
        ) from None
    return out


def blur_kernel_size(size: int, kernel_frac: float) -> int:
    """Odd kernel side for a view of ``size`` px: ``kernel_frac`` of it, at least 3 (23 for 224)."""
    k = int(size * kernel_frac)
    return max(3, k // 2 * 2 + 1)


def resolve(
    recipe: str | Mapping[str, Any],
    size: int,
    num_views: int = 2,
    overrides: Mapping[str, Any] | None = None,
    num_local: int | None = None,
    local_size: int | None = None,
) -> list[ViewSpec]:
    """Turn a recipe (a name in :data:`RECIPES` or a dict) into one spec per view.

    Global views come first, then multi-crop's local views.
    """
    if isinstance(recipe, str):
        name, data = recipe, recipe_ops(recipe)
    elif isinstance(recipe, Mapping):
        name, data = "<custom>", dict(recipe)
        _check_ops(data, "in custom recipe", extra=("views", "local"))
    else:
        raise ConfigError(f"recipe must be a name ({', '.join(available_recipes())}) or a dict, got {recipe!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"size must be a positive int (the views' side in pixels), got {size!r}")
    if not isinstance(num_views, int) or num_views < 1:
        raise ConfigError(f"num_views must be an int >= 1, got {num_views!r}")

    data = _apply_overrides(data, overrides or {}, name)
    defaults = {op: dict(params) for op, params in OPS.items()}
    shared = {op: params for op, params in data.items() if op not in ("views", "local")}
    base = _merge(defaults, shared)
    per_view = data.get("views") or [{}]
    for i, v in enumerate(per_view):
        _check_ops(v, f"in views[{i}] of recipe '{name}'")

    specs = [
        ViewSpec(size=size, ops=_check_values(_merge(base, per_view[i % len(per_view)])))
        for i in range(num_views)
    ]

    local = data.get("local")
    if local is None:
        if num_local or local_size:
            raise ConfigError(f"num_local/local_size apply to multicrop only, not to recipe '{name}'")
        return specs
    _check_ops(local, f"in 'local' of recipe '{name}'", extra=LOCAL_KEYS)
    n = int(local.get("num", LOCAL_KEYS["num"])) if num_local is None else num_local
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"num_local must be an int >= 0, got {n!r}")
    if local_size is None:
        local_size = max(1, int(round(size * float(local.get("size_frac", LOCAL_KEYS["size_frac"])))))
    if not isinstance(local_size, int) or local_size < 1:
        raise ConfigError(f"local_size must be a positive int, got {local_size!r}")
    local_ops = {op: p for op, p in local.items() if op not in LOCAL_KEYS}
    lspec = _check_values(_merge(base, local_ops))
    specs += [ViewSpec(size=local_size, ops=lspec, local=True) for _ in range(n)]
    return specs


def normalization(
    preset: str | None, mean: Iterable[float] | None, std: Iterable[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std: a preset's (``imagenet`` by default), replaced by what is given."""
    key = preset or "imagenet"
    if key not in NORMALIZATION:
        raise _unknown("normalization preset", key, NORMALIZATION, "")
    pm, ps = NORMALIZATION[key]
    m = tuple(float(v) for v in (pm if mean is None else mean))
    s = tuple(float(v) for v in (ps if std is None else std))
    if len(m) != 3 or len(s) != 3:
        raise ConfigError(f"mean and std need 3 values (R, G, B), got mean={m}, std={s}")
    if any(not math.isfinite(v) or v <= 0 for v in s):
        raise ConfigError(f"std values must be positive, got {s}")
    return m, s
