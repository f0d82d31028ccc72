"""The work of `infoview mi-bench` (infoview.commands.mi_bench documents its keys)."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from infoview.config import save_config
from infoview.errors import ConfigError, InfoviewError
from infoview.objectives import Objective, alpha_floor, build, matrix_pairs, objective_params
from infoview.utils.device import resolve_device
from infoview.utils.io import atomic_write_text, save_figure
from infoview.utils.provenance import provenance


CRITICS = ("separable", "concat")
# estimators whose plain entry takes a value from a top-level key
_TOP_LEVEL_PARAMS = {"ml_cpc": ("alpha",)}


# --------------------------------------------------------------------------- estimators


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


# --------------------------------------------------------------------------- data


def rho_for(mi: float, dim: int) -> float:
    """Per-dimension correlation giving a total MI of `mi` nats over `dim` dimensions."""
    return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def true_mi(rho: float, dim: int) -> float:
    return -0.5 * dim * math.log(1.0 - rho * rho)


# --------------------------------------------------------------------------- critics


class StackedCritic:
    """E independent critics of the same shape, held as parameters of shape (E, ...).

    One batched matmul per layer serves every estimator; since Adam is elementwise,
    one optimiser over the stacked tensors is E independent optimisers.
    """

    def __init__(
        self, kind: str, n_critics: int, dim: int, hidden: int, layers: int, embed_dim: int, seed: int, device
    ):
        import torch

        self.kind = kind
        self.E = n_critics
        gen = torch.Generator().manual_seed(seed)

        def layer(fan_in: int, fan_out: int):
            # nn.Linear's default initialisation, drawn once and copied to every critic
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
            b = (torch.rand(1, fan_out, generator=gen) * 2 - 1) * bound
            return [
                t.unsqueeze(0).repeat(n_critics, 1, 1).to(device).requires_grad_()
                for t in (w, b)
            ]

        def mlp(fan_in: int, fan_out: int) -> list:
            widths = [fan_in] + [hidden] * layers + [fan_out]
            return [p for a, b in zip(widths[:-1], widths[1:]) for p in layer(a, b)]

        if kind == "separable":
            self.g = mlp(dim, embed_dim)
            self.h = mlp(dim, embed_dim)
            self.params = self.g + self.h
        elif kind == "concat":
            first = mlp(2 * dim, 1)
            w1, self.b1 = first[0], first[1]
            # [x, y] @ W1 = x @ W1[:dim] + y @ W1[dim:]: the first layer never sees n^2 inputs
            self.wx = w1[:, :dim].detach().clone().requires_grad_()
            self.wy = w1[:, dim:].detach().clone().requires_grad_()
            self.rest = first[2:]
            self.params = [self.wx, self.wy, self.b1] + self.rest
        else:
            raise ConfigError(f"critic must be one of {', '.join(CRITICS)}, got '{kind}'")

    @staticmethod
    def _layers(h, ps):
        """Apply (w, b) pairs with ReLU between them; h is (E, rows, fan_in)."""
        import torch

        last = len(ps) - 2
        for i in range(0, len(ps), 2):
            h = torch.baddbmm(ps[i + 1], h, ps[i])
            if i < last:
                h = torch.relu(h)
        return h

    def _mlp(self, x, ps):
        return self._layers(x.expand(self.E, -1, -1), ps)

    def __call__(self, x, y):
        """x, y: (n, dim) -> scores (E, n, n), scores[e, i, j] = critic_e(x_i, y_j)."""
        import torch

        if self.kind == "separable":
            return torch.bmm(self._mlp(x, self.g), self._mlp(y, self.h).transpose(1, 2))
        E, n = self.E, x.shape[0]
        a = torch.matmul(x, self.wx)  # (E, n, H)
        b = torch.baddbmm(self.b1, y.expand(E, -1, -1), self.wy)  # (E, n, H)
        h = torch.relu(a.unsqueeze(2) + b.unsqueeze(1)).view(E, n * n, -1)
        return self._layers(h, self.rest).view(E, n, n)


def _adam(params, lr: float):
    import torch

    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


# --------------------------------------------------------------------------- training


def train_staircase(
    objectives: Sequence,
    levels: Sequence[float],
    *,
    dim: int,
    steps_per_level: int,
    batch_size: int,
    critic: str = "separable",
    hidden: int = 256,
    layers: int = 2,
    embed_dim: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
    device=None,
    progress: bool = True,
    labels: Sequence[str] | None = None,
):
    """Train one critic per objective through the staircase.

    Returns (per-step certified bounds (steps, E), per-step uncertified training
    values (steps, E), NaN where an objective has none, each objective's ceiling,
    log m), the arrays as float64 numpy.
    """
    import torch
    from tqdm.auto import tqdm


    device = torch.device(device or "cpu")
    torch.manual_seed(seed)  # objectives that draw random numbers
    E, n, S = len(objectives), batch_size, steps_per_level
    labels = list(labels or [getattr(o, "name", str(i)) for i, o in enumerate(objectives)])
    objectives = [o.to(device) for o in objectives]
    model = StackedCritic(critic, E, dim, hidden, layers, embed_dim, seed, device)
    params = list(model.params) + [p for o in objectives for p in o.parameters() if p.requires_grad]
    opt = _adam(params, lr)
    scheduled = [o for o in objectives if type(o).set_epoch is not _base_set_epoch()]

    total = S * len(levels)
    record = torch.empty(total, E, dtype=torch.float32, device=device)
    uncertified = torch.full((total, E), math.nan, dtype=torch.float32, device=device)
    ceilings = [math.nan] * E
    gen = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, min(S, 1000, (1 << 22) // max(1, 2 * n * dim)))
    every = max(1, min(200, S // 10))
    log_m = math.log(n)
    bar = tqdm(total=total, desc="mi-bench", unit="step", disable=not progress, mininterval=0.5,
               dynamic_ncols=True)
    t = 0
    try:
        for level in levels:
            rho = rho_for(float(level), dim)
            noise = math.sqrt(1.0 - rho * rho)
            for start in range(0, S, chunk):
                c = min(chunk, S - start)
                z = torch.randn(c, 2, n, dim, generator=gen, device=device)
                xs = z[:, 0]
                ys = rho * xs + noise * z[:, 1]
                for i in range(c):
                    if scheduled:
                        for o in scheduled:
                            o.set_epoch(t / S)
                    scores = model(xs[i], ys[i])
                    losses, mis = [], []
                    for e, obj in enumerate(objectives):
                        pos, neg = matrix_pairs(scores[e])
                        out = obj(pos, neg)
                        losses.append(out.loss)
                        mis.append(out.mi)
                        ceilings[e] = out.ceiling
                        if out.estimate is not None:
                            uncertified[t, e] = out.estimate
                    log_m = out.log_m
                    opt.zero_grad(set_to_none=True)
                    torch.stack(losses).sum().backward()
                    opt.step()
                    record[t] = torch.stack(mis)
                    t += 1
                    if progress and t % every == 0:
                        last = record[t - every:t].mean(0).tolist()
                        bar.set_postfix_str(
                            f"MI={float(level):g} " + " ".join(f"{k}={v:.2f}" for k, v in zip(labels, last)),
                            refresh=False,
                        )
                        bar.update(every)
        bar.update(total - bar.n)
    finally:
        bar.close()
    return record.double().cpu().numpy(), uncertified.double().cpu().numpy(), ceilings, float(log_m)


def _base_set_epoch():
    return Objective.set_epoch


def level_means(record, steps_per_level: int, n_levels: int, reduce: str = "mean") -> list[list[float]]:
    """Mean (or median) of each estimator over the last quarter of each level: E lists of n_levels."""
    import numpy as np

    S = steps_per_level
    q = max(1, S // 4)
    fn = np.median if reduce == "median" else np.mean
    out = [fn(record[lev * S + S - q: (lev + 1) * S], axis=0) for lev in range(n_levels)]
    return np.stack(out, axis=1).tolist()  # (E, n_levels)


# --------------------------------------------------------------------------- outputs


def _smooth(values, steps_per_level: int):
    """Centred moving average within each level (so the staircase steps stay sharp)."""
    import numpy as np

    w = max(1, steps_per_level // 40)
    out = np.empty_like(values)
    for s in range(0, len(values), steps_per_level):
        seg = values[s: s + steps_per_level]
        c = np.concatenate([[0.0], np.cumsum(seg)])
        idx = np.arange(len(seg))
        lo = np.clip(idx - w // 2, 0, len(seg))
        hi = np.clip(idx + w // 2 + 1, 0, len(seg))
        out[s: s + len(seg)] = (c[hi] - c[lo]) / (hi - lo)
    return out


def with_estimates(uncertified) -> list[int]:
    """The estimators (column indices) that recorded an uncertified training value at some step."""
    import numpy as np

    return [] if uncertified is None else [e for e in range(uncertified.shape[1]) if np.isfinite(uncertified[:, e]).any()]


def plot(path, record, keys, levels, steps_per_level, log_m, batch_size, title="", uncertified=None,
         ceiling_lines=()) -> Path:
    """Bounds solid, uncertified training values dashed (in the bound's colour), true MI as stairs.

    ``ceiling_lines``: (value, label) pairs drawn as dotted horizontal lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np


    steps = np.arange(1, record.shape[0] + 1)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    # raw lines first, smoothed ones on top, so no estimator's noise hides another's trend
    for e in range(len(keys)):
        ax.plot(steps, record[:, e], color=f"C{e % 10}", alpha=0.15, lw=0.5)
    for e, key in enumerate(keys):
        ax.plot(steps, _smooth(record[:, e], steps_per_level), color=f"C{e % 10}", lw=1.6, label=key)
    for e in with_estimates(uncertified):
        ax.plot(steps, _smooth(uncertified[:, e], steps_per_level), color=f"C{e % 10}", lw=1.2, ls="--",
                label=f"{keys[e]}: its training value (an estimate, not a bound)")
    edges = np.arange(len(levels) + 1) * steps_per_level
    ax.stairs([float(v) for v in levels], edges, color="black", lw=2, label="true MI", baseline=None)
    ax.axhline(log_m, color="0.35", ls="--", lw=1.2, label=f"log m = log {batch_size} = {log_m:.2f}")
    for value, label in ceiling_lines:
        ax.axhline(value, color="0.55", ls=":", lw=1.2, label=label)
    top = max([max(float(v) for v in levels), log_m, *(v for v, _ in ceiling_lines)])
    ax.set_ylim(-1.0, top * 1.25 + 1.0)
    ax.set_xlim(0, record.shape[0])
    ax.set_xlabel("training step")
    ax.set_ylabel("MI estimate (nats)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def write_csv(path, record, keys, levels, steps_per_level, uncertified=None) -> Path:
    """One row per step: the true MI, each estimator's bound, then the uncertified values that exist."""

    extra = with_estimates(uncertified)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "true_mi", *keys, *(f"{keys[e]} [estimate]" for e in extra)])
    for t, row in enumerate(record):
        level = levels[t // steps_per_level]
        w.writerow([t + 1, level, *(f"{v:.6g}" for v in row), *(f"{uncertified[t, e]:.6g}" for e in extra)])
    return atomic_write_text(path, buf.getvalue())


def _finite_or_none(x: float, ndigits: int = 5):
    return round(x, ndigits) if math.isfinite(x) else None


# --------------------------------------------------------------------------- command


def _check_cfg(cfg) -> dict[str, Any]:
    c = {k: cfg[k] for k in cfg}
    levels = c["levels"]
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = [levels]
    if not levels or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in levels):
        raise ConfigError(f"levels must be a list of positive MI values in nats, e.g. [2,4,6], got {levels!r}")
    c["levels"] = [int(v) if float(v).is_integer() else float(v) for v in levels]
    minimum = {"dim": 1, "steps_per_level": 1, "batch_size": 2, "hidden": 1, "layers": 1, "embed_dim": 1}
    for key, low in minimum.items():
        if c[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {c[key]}")
    if c["threads"] < 0:
        raise ConfigError(f"threads must be 0 (torch's default) or a positive count, got {c['threads']}")
    if not c["lr"] > 0:
        raise ConfigError(f"lr must be positive, got {c['lr']}")
    if c["critic"] not in CRITICS:
        raise ConfigError(f"critic must be one of {', '.join(CRITICS)}, got '{c['critic']}'")
    if c["alpha"] == "floor":
        c["alpha"] = alpha_floor(c["batch_size"], c["batch_size"])  # an n x n matrix: n rows, m = n
    elif c["alpha"] is not None:
        try:
            c["alpha"] = float(c["alpha"])
        except (TypeError, ValueError):
            raise ConfigError(f"alpha must be a positive number or 'floor', got {c['alpha']!r}") from None
        if not c["alpha"] > 0:
            raise ConfigError(f"alpha must be a positive number or 'floor', got {c['alpha']}")
    if not str(c["out_dir"]).strip():
        raise ConfigError("out_dir is empty")
    out = Path(c["out_dir"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir '{out}' exists and is not a folder")
    return c


def run(cfg) -> dict:
    import torch
    from omegaconf import OmegaConf


    c = _check_cfg(cfg)
    estimators = c["estimators"]
    if not isinstance(estimators, str):
        estimators = OmegaConf.to_container(estimators) if OmegaConf.is_config(estimators) else list(estimators)
    # everything a user can get wrong is checked before any training
    specs = parse_estimators(estimators, {"alpha": c["alpha"]})
    objectives = build_objectives(specs)

    device = resolve_device(c["device"])
    out_dir = Path(c["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)

    keys = [s.key for s in specs]
    threads_before = torch.get_num_threads()
    if c["threads"] and device.type == "cpu":
        torch.set_num_threads(int(c["threads"]))
    threads_used = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        record, uncertified, ceilings, log_m = train_staircase(
            objectives,
            c["levels"],
            dim=c["dim"],
            steps_per_level=c["steps_per_level"],
            batch_size=c["batch_size"],
            critic=c["critic"],
            hidden=c["hidden"],
            layers=c["layers"],
            embed_dim=c["embed_dim"],
            lr=c["lr"],
            seed=c["seed"],
            device=device,
            labels=keys,
        )
    finally:
        torch.set_num_threads(threads_before)  # run() may be called from a larger program
    seconds = time.perf_counter() - t0
    means = level_means(record, c["steps_per_level"], len(c["levels"]))
    medians = level_means(record, c["steps_per_level"], len(c["levels"]), "median")

    estimates = {k: [_finite_or_none(v) for v in row] for k, row in zip(keys, means)}
    has_estimate = with_estimates(uncertified)
    unc_means = level_means(uncertified, c["steps_per_level"], len(c["levels"])) if has_estimate else []
    results = {
        "batch_size": c["batch_size"],
        "levels": c["levels"],
        "estimates": estimates,
        # training values that are not bounds (ML-CPC below its floor, Ring's restricted value)
        "uncertified": {keys[e]: [_finite_or_none(v) for v in unc_means[e]] for e in has_estimate},
        "ceilings": {k: _finite_or_none(v) for k, v in zip(keys, ceilings)},
        # the same window's median: NWJ and JS have heavy lower tails that drag the mean
        "medians": {k: [_finite_or_none(v) for v in row] for k, row in zip(keys, medians)},
        "log_m": round(log_m, 5),
        "steps_per_level": c["steps_per_level"],
        "dim": c["dim"],
        "critic": c["critic"],
        "lr": c["lr"],
        "seed": c["seed"],
        "estimators": {s.key: {"objective": s.objective, "params": s.built_with} for s in specs},
        "device": str(device),
        "threads": threads_used,
        "seconds": round(seconds, 1),
        "provenance": provenance(),
    }
    title = (
        f"Gaussian staircase: dim {c['dim']}, batch {c['batch_size']}, {c['critic']} critic, "
        f"{c['steps_per_level']} steps per level"
    )
    write_csv(out_dir / "estimates.csv", record, keys, c["levels"], c["steps_per_level"], uncertified)
    labels = [s.label for s in specs]
    lines = []
    if any(s.objective == "ml_cpc" for s in specs):
        cands = c["batch_size"] * (c["batch_size"] - 1) + 1  # log of it: ML-CPC's ceiling at its floor
        lines.append((math.log(cands), f"ML-CPC's ceiling at its floor: log {cands} = {math.log(cands):.2f}"))
    plot(out_dir / "mi_bench.png", record, labels, c["levels"], c["steps_per_level"], log_m, c["batch_size"], title,
         uncertified=uncertified, ceiling_lines=lines)
    save_config(cfg, out_dir / "config.yaml")
    # results.json last: its presence means the run finished
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    summary = {k: v for k, v in results.items() if k not in ("provenance", "estimators", "medians", "ceilings")}
    summary["out_dir"] = str(out_dir)
    return summary
