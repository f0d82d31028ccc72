"""The work of `infoview mi-bench` (infoview.commands.mi_bench documents its keys): checks, run, and outputs.

mi-bench measures the objectives, not a backbone: it is a package of its own beside pretrain and eval. The
estimators list is read in estimators.py, the critics are trained in critics.py and the plot is drawn in
plot.py.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from infoview.config import save_config
from infoview.errors import ConfigError
from infoview.mi_bench.critics import CRITICS, level_means, train_staircase
from infoview.mi_bench.estimators import EstimatorSpec, build_objectives, parse_estimators
from infoview.mi_bench.plot import plot, with_estimates
from infoview.objectives import alpha_floor
from infoview.utils.device import resolve_device
from infoview.utils.io import atomic_write_text
from infoview.utils.lock import hold_folder
from infoview.utils.provenance import provenance


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


#: the sections of the command's keys (``data.levels``, ...); the run reads them as one flat dict of their leaves
SECTIONS = ("data", "model", "optim", "train")


def _flat(cfg) -> tuple[dict[str, Any], dict[str, str]]:
    """``(the keys as one flat dict of leaves, {leaf: its dotted key})``: results.json keeps the leaves' names."""
    c = {k: cfg[k] for k in cfg if k not in SECTIONS}
    names = {k: k for k in c}
    for section in SECTIONS:
        for key in cfg.get(section) or {}:
            c[key], names[key] = cfg[section][key], f"{section}.{key}"
    return c, names


def _check_cfg(cfg) -> dict[str, Any]:
    c, name = _flat(cfg)
    levels = c["levels"]
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = [levels]
    if not levels or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in levels):
        raise ConfigError(f"{name['levels']} must be a list of positive MI values in nats, e.g. [2,4,6], "
                          f"got {levels!r}")
    c["levels"] = [int(v) if float(v).is_integer() else float(v) for v in levels]
    minimum = {"dim": 1, "steps_per_level": 1, "batch_size": 2, "hidden": 1, "layers": 1, "embed_dim": 1}
    for key, low in minimum.items():
        if c[key] < low:
            raise ConfigError(f"{name[key]} must be at least {low}, got {c[key]}")
    if c["threads"] < 0:
        raise ConfigError(f"{name['threads']} must be 0 (torch's default) or a positive count, got {c['threads']}")
    if not c["lr"] > 0:
        raise ConfigError(f"{name['lr']} must be positive, got {c['lr']}")
    if c["critic"] not in CRITICS:
        raise ConfigError(f"{name['critic']} must be one of {', '.join(CRITICS)}, got '{c['critic']}'")
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


def _train(c: dict[str, Any], objectives: list, keys: list[str], device: torch.device):
    """``((bounds, uncertified values, ceilings, log m), threads used, seconds)`` with ``c["threads"]`` CPU threads."""
    threads_before = torch.get_num_threads()
    if c["threads"] and device.type == "cpu":
        torch.set_num_threads(int(c["threads"]))
    threads_used = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        trained = train_staircase(
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
    return trained, threads_used, time.perf_counter() - t0


def _results(c: dict[str, Any], specs: list[EstimatorSpec], trained, device: torch.device, threads: int,
             seconds: float) -> dict[str, Any]:
    """results.json: each estimator's level means (bounds, training values), ceilings and medians, and the run."""
    record, uncertified, ceilings, log_m = trained
    keys = [s.key for s in specs]
    means = level_means(record, c["steps_per_level"], len(c["levels"]))
    medians = level_means(record, c["steps_per_level"], len(c["levels"]), "median")
    has_estimate = with_estimates(uncertified)
    unc_means = level_means(uncertified, c["steps_per_level"], len(c["levels"])) if has_estimate else []
    return {
        "batch_size": c["batch_size"],
        "levels": c["levels"],
        "estimates": {k: [_finite_or_none(v) for v in row] for k, row in zip(keys, means)},
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
        "threads": threads,
        "seconds": round(seconds, 1),
        "provenance": provenance(),
    }


def _write(cfg, c: dict[str, Any], specs: list[EstimatorSpec], trained, results: dict, out_dir: Path) -> None:
    """estimates.csv, mi_bench.png, config.yaml, then results.json: its presence means the run finished."""
    record, uncertified, _, log_m = trained
    title = (
        f"Gaussian staircase: dim {c['dim']}, batch {c['batch_size']}, {c['critic']} critic, "
        f"{c['steps_per_level']} steps per level"
    )
    write_csv(out_dir / "estimates.csv", record, [s.key for s in specs], c["levels"], c["steps_per_level"],
              uncertified)
    labels = [s.label for s in specs]
    lines = []
    if any(s.objective == "ml_cpc" for s in specs):
        cands = c["batch_size"] * (c["batch_size"] - 1) + 1  # log of it: ML-CPC's ceiling at its floor
        lines.append((math.log(cands), f"ML-CPC's ceiling at its floor: log {cands} = {math.log(cands):.2f}"))
    plot(out_dir / "mi_bench.png", record, labels, c["levels"], c["steps_per_level"], log_m, c["batch_size"], title,
         uncertified=uncertified, ceiling_lines=lines)
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")


def run(cfg) -> dict:
    c = _check_cfg(cfg)
    estimators = c["estimators"]
    if not isinstance(estimators, str):
        estimators = OmegaConf.to_container(estimators) if OmegaConf.is_config(estimators) else list(estimators)
    # everything a user can get wrong is checked before any training
    specs = parse_estimators(estimators, {"alpha": c["alpha"]})
    objectives = build_objectives(specs)

    device = resolve_device(c["device"])
    with hold_folder(Path(c["out_dir"]), "mi-bench") as out_dir:
        trained, threads, seconds = _train(c, objectives, [s.key for s in specs], device)
        results = _results(c, specs, trained, device, threads, seconds)
        _write(cfg, c, specs, trained, results, out_dir)
    summary = {k: v for k, v in results.items() if k not in ("provenance", "estimators", "medians", "ceilings")}
    summary["out_dir"] = str(out_dir)
    return summary
