"""The plot of `infoview mi-bench`: each estimator's bound (and training value) against the true MI's staircase."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infoview.utils.io import save_figure


def _smooth(values, steps_per_level: int):
    """Centred moving average within each level (so the staircase steps stay sharp)."""
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
    return [] if uncertified is None else [e for e in range(uncertified.shape[1]) if np.isfinite(uncertified[:, e]).any()]


def plot(path, record, keys, levels, steps_per_level, log_m, batch_size, title="", uncertified=None,
         ceiling_lines=()) -> Path:
    """Bounds solid, uncertified training values dashed (in the bound's colour), true MI as stairs.

    ``ceiling_lines``: (value, label) pairs drawn as dotted horizontal lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
