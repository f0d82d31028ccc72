"""The Gaussian MI staircase: how much mutual information does each bound certify?

x and y are standard normal vectors in R^dim with y = rho * x + sqrt(1 - rho^2) * eps,
so the true MI is -(dim / 2) * log(1 - rho^2) nats. rho is set so that the true MI
steps through `data.levels` (2, 4, 6, 8, 10 nats by default), `train.steps_per_level`
steps each. One critic per estimator is trained with Adam (`optim.lr`) on fresh batches
of `data.batch_size` pairs, continuing from level to level. Each step the critic scores every (x_i, y_j)
pair of the batch; the diagonal holds the positives and the rest of each row its
negatives (objectives.matrix_pairs), the objective turns them into a loss and an MI
lower bound, and the bound is recorded. Every critic starts from the same weights
and sees the same batches, so differences between estimators come from the
objectives alone. InfoNCE can never certify more than log(batch_size) nats.

model.critic=separable scores g(x)^T h(y) with two MLPs (embedding `model.embed_dim`);
model.critic=concat scores f([x, y]) with one MLP over all batch_size^2 pairs (slower).
The MLPs have `model.layers` hidden layers of `model.hidden` ReLU units (2 x 256).

estimators: objective names, comma separated. `name:key=value[:key=value]` (or
`name(key=value)`) sets an objective's parameters, so one run can compare several:
`estimators=infonce,ml_cpc:alpha=0.1,ml_cpc:alpha=0.01`; the result is keyed
`ml_cpc(alpha=0.1)`. A plain `ml_cpc` takes its alpha from the `alpha` key.

What is recorded is each objective's `.mi`, a certified lower bound. Where an
objective trains on a value that is not a bound (ML-CPC with alpha below its
floor, Ring's restricted value), that value is recorded too, apart and
labelled an estimate: `ml_cpc:alpha=0.0001` trains its critic at alpha = 1e-4
and certifies J at the floor on the same scores.

Writes to out_dir: results.json ({"batch_size", "levels", "estimates": {estimator:
[mean of its certified bound over the last quarter of each level]},
"uncertified": {estimator: [the same for its training value, not a bound]},
"ceilings": {estimator: the most its bound can read}, ...}), estimates.csv
(every step; uncertified values in columns "<estimator> [estimate]"),
mi_bench.png (bounds against step, solid; estimates dashed; true MI, log m and
ML-CPC's ceiling at the floor) and config.yaml.

train.threads: CPU threads for torch. 1 (the default) is the fastest for these small
critics on a shared machine: with 2 threads on 2 busy cores a run was 5-17x
slower. 0 keeps torch's default (one per core).

alpha: `floor` by default, ML-CPC's smallest valid alpha for an n x n matrix,
n / (n (n - 1) + 1) (0.0159 at batch 64, ceiling log 4033 = 8.30 nats); or a
number. See docs/mi_bench.md and docs/objectives.md.

The keys were flat on main (levels, dim, batch_size, critic, hidden, layers,
embed_dim, lr, steps_per_level, seed, device, threads); those names still work,
each read as its data.*, model.*, optim.* or train.* key with a one-line note.

Example: infoview mi-bench out_dir=runs/mi_bench train.steps_per_level=1000
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command
from infoview.schema import Key

CRITICS = ("separable", "concat")

DEFAULTS: dict[str, Any] = {
    "out_dir": Key("runs/mi_bench", "where results.json, estimates.csv, mi_bench.png and config.yaml go"),
    "estimators": Key(["infonce", "ml_cpc", "ml_cpc:alpha=0.0001", "nwj", "js"],
                      "objectives to compare, name or name:key=value (see above)"),
    "alpha": Key("floor", "ML-CPC's alpha for a plain ml_cpc: floor (the smallest valid) or a positive number"),
    "data": {
        "levels": Key([2, 4, 6, 8, 10], "the true MI of each level of the staircase, in nats", above=0),
        "dim": Key(20, "dimension of x and of y", min=1),
        "batch_size": Key(64, "pairs per batch: n rows of n candidates (InfoNCE's ceiling is log n)", min=2),
    },
    "model": {
        "critic": Key("separable", "separable: g(x)^T h(y); concat: f([x, y]) over all pairs", choices=CRITICS),
        "hidden": Key(256, "hidden units per layer of the critic's MLPs", min=1),
        "layers": Key(2, "hidden layers of the critic's MLPs", min=1),
        "embed_dim": Key(32, "embedding width of the separable critic", min=1),
    },
    "optim": {"lr": Key(5e-4, "Adam's learning rate", above=0)},
    "train": {
        "steps_per_level": Key(4000, "training steps at each level", min=1),
        "seed": Key(0, "seed of the critics' weights and of the batches"),
        "device": Key("auto", "auto (a GPU when there is one), cpu, cuda or cuda:<index>"),
        "threads": Key(1, "CPU threads for torch; 0 keeps torch's default", min=0),
    },
}
#: mi-bench's keys were flat until they joined the sections every command shares
RENAMED = {f"{key}": f"{section}.{key}" for section, keys in DEFAULTS.items() if isinstance(keys, dict)
           for key in keys}
COMMAND = Command(help='Train critics on the Gaussian MI staircase and compare what each bound certifies.',
                  distributed=False, renamed=RENAMED)


def run(cfg) -> dict | None:
    from infoview.mi_bench import run as work

    return work(cfg)
