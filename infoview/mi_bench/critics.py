"""The training of `infoview mi-bench`: the Gaussian staircase, the stacked critics, and the loop that trains them.

Its loop takes from the shared one (infoview.training.loop) the progress bar
and the optimiser step, not ``fit`` itself, whose per-step work does not fit
a benchmark of estimators:

- ``fit`` reads every step's loss back to check it (a host sync per step);
  here one step trains E critics in lock-step on the sum of their losses, a
  sum that says nothing by itself. What is watched are the E bounds, recorded
  every step in a tensor on the device and read back only every few steps
  for the bar (on a GPU the sync would cost as much as the step).
- ``fit`` stops on a loss that is not finite; here an estimator that
  diverges (NWJ's mean of exponentials can overflow) is a result: its
  critic's slice of the stacked parameters goes bad, the others train on
  (each loss reaches only its own slice, and Adam is elementwise), and the
  report shows it (a bound that is not finite is written as null).
- There is no schedule (Adam at a constant lr) and no epochs: the staircase
  is one stream of fresh draws, its level changing every ``steps_per_level``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from infoview.errors import ConfigError
from infoview.objectives import Objective, matrix_pairs
from infoview.training.loop import optimizer_step, progress_bar

CRITICS = ("separable", "concat")


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
        if self.kind == "separable":
            return torch.bmm(self._mlp(x, self.g), self._mlp(y, self.h).transpose(1, 2))
        E, n = self.E, x.shape[0]
        a = torch.matmul(x, self.wx)  # (E, n, H)
        b = torch.baddbmm(self.b1, y.expand(E, -1, -1), self.wy)  # (E, n, H)
        h = torch.relu(a.unsqueeze(2) + b.unsqueeze(1)).view(E, n * n, -1)
        return self._layers(h, self.rest).view(E, n, n)


def _adam(params, lr: float):
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
    every = max(1, min(200, S // 10))
    log_m = math.log(n)
    bar = progress_bar(total, "mi-bench", progress)
    try:
        for t, (level, x, y) in enumerate(_staircase(levels, dim, S, n, gen, device)):
            for o in scheduled:
                o.set_epoch(t / S)
            log_m = _step(model, objectives, opt, x, y, record, uncertified, ceilings, t)
            if progress and (t + 1) % every == 0:
                last = record[t + 1 - every:t + 1].mean(0).tolist()
                bar.set_postfix_str(
                    f"MI={float(level):g} " + " ".join(f"{k}={v:.2f}" for k, v in zip(labels, last)),
                    refresh=False,
                )
                bar.update(every)
        bar.update(total - bar.n)
    finally:
        bar.close()
    return record.double().cpu().numpy(), uncertified.double().cpu().numpy(), ceilings, float(log_m)


def _staircase(levels: Sequence[float], dim: int, steps_per_level: int, n: int, gen: torch.Generator, device):
    """``(level, x, y)`` for every step: ``n`` fresh pairs at each level's correlation, drawn in chunks."""
    S = steps_per_level
    chunk = max(1, min(S, 1000, (1 << 22) // max(1, 2 * n * dim)))
    for level in levels:
        rho = rho_for(float(level), dim)
        noise = math.sqrt(1.0 - rho * rho)
        for start in range(0, S, chunk):
            c = min(chunk, S - start)
            z = torch.randn(c, 2, n, dim, generator=gen, device=device)
            xs = z[:, 0]
            ys = rho * xs + noise * z[:, 1]
            for i in range(c):
                yield level, xs[i], ys[i]


def _step(model: StackedCritic, objectives: Sequence, opt, x, y, record, uncertified, ceilings: list,
          t: int) -> float:
    """One Adam step of every critic on its objective; records step ``t``'s bounds and returns log m."""
    scores = model(x, y)
    losses, mis = [], []
    for e, obj in enumerate(objectives):
        pos, neg = matrix_pairs(scores[e])
        out = obj(pos, neg)
        losses.append(out.loss)
        mis.append(out.mi)
        ceilings[e] = out.ceiling
        if out.estimate is not None:
            uncertified[t, e] = out.estimate
    optimizer_step(opt, torch.stack(losses).sum())
    record[t] = torch.stack(mis)
    return out.log_m


def _base_set_epoch():
    return Objective.set_epoch


def level_means(record, steps_per_level: int, n_levels: int, reduce: str = "mean") -> list[list[float]]:
    """Mean (or median) of each estimator over the last quarter of each level: E lists of n_levels."""
    S = steps_per_level
    q = max(1, S // 4)
    fn = np.median if reduce == "median" else np.mean
    out = [fn(record[lev * S + S - q: (lev + 1) * S], axis=0) for lev in range(n_levels)]
    return np.stack(out, axis=1).tolist()  # (E, n_levels)
