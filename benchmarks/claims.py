"""The seed papers' claims on CIFAR-10 at one equal budget: kNN and linear top-1, the certified bound, its ceiling.

The claims (docs/results.md, "The papers' claims"):

- ML-CPC (Song & Ermon 2020) certifies more than log m and trains encoders at
  least as good as InfoNCE: simclr/infonce against simclr/ml_cpc (alpha 0.1);
- Ring (Wu, Zhuang, Mosse, Yamins, Goodman 2020): conditional negatives beat
  the unconditional ones: simclr/ring, ir/infonce against ir/ring (IR-Ring, the
  ring on the whole bank), moco/infonce against moco/ring.

Every run of a budget trains the same encoder with the same views, optimiser
and number of epochs (benchmarks/objectives_cifar10.yaml's settings, the
method's and objective's keys from benchmarks/objectives_cifar10.py, the
ring's anneal over the first half of the run), each for seeds 0 and 1, then
`infoview knn` (k = 200, all 50,000 against all 10,000) and `infoview linear`
(100 epochs on frozen features); random_init scores the same encoder at its
initial weights. A budget names its encoder, length and machine:

- ``cpu-r18half-10ep``: the half-width ResNet-18 with the ImageNet stem of
  objectives_cifar10.yaml, 10 epochs of 256 (1,950 steps), the training split
  held in memory (data.backend=resident); about 15 minutes a run on 2 cores.
- ``gpu-r18-100ep``: the one-GPU preset's ResNet-18 with the CIFAR stem
  (infoview/configs/simclr_infonce_cifar10_1gpu.yaml's encoder, views and SGD),
  100 epochs of 512 on one GPU; MoCo and IR with their keys as above.

Runs are done in the order of the plan: every claim's pair at seed 0 first,
then seed 1, so that a session cut short leaves whole comparisons. A finished
run (knn.json and linear.json present) is read, not redone; an interrupted
one resumes from its checkpoint. Writes to --out (default runs/claims/<budget>):
results.jsonl (one line per run, the budget and machine in each), table.md
(printed too). The data: two raw .beton files written once from --data.

    python benchmarks/claims.py                                   # the CPU budget, all runs
    python benchmarks/claims.py --budget gpu-r18-100ep --data DIR  # on a GPU
    python benchmarks/claims.py --runs simclr/infonce simclr/ml_cpc --seeds 0
    python benchmarks/claims.py --smoke --data DIR --out /tmp/x    # seconds: every stage runs
    python benchmarks/claims.py --table                           # the runs finished so far; trains nothing
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import objectives_cifar10 as oc  # noqa: E402

ROOT = HERE.parent
BUDGETS = {
    "cpu-r18half-10ep": {"epochs": 10, "config": str(oc.CONFIG), "extra": ["train.max_steps=0"], "device": "cpu"},
    "gpu-r18-100ep": {
        "epochs": 100, "config": "simclr_infonce_cifar10_1gpu", "device": "cuda",
        "extra": ["train.eval_every=0"],
    },
}
# the claims, each a pair (or the ring's third arm); the keys are objectives_cifar10's
RING = ["objective.name=ring", "objective.outer=0.1", "objective.inner=0.1"]
CLAIMS = {
    "simclr/infonce": ["method=simclr", "objective.name=infonce"],
    "simclr/ml_cpc": ["method=simclr", "objective.name=ml_cpc", "objective.alpha=0.1"],
    "simclr/ring": ["method=simclr", *RING],
    "ir/infonce": [*oc.IR, "ir.num_negatives=4096", "objective.name=infonce"],
    "ir/ring": [*oc.IR, "ir.num_negatives=0", *RING],
    "moco/infonce": [*oc.MOCO, "objective.name=infonce"],
    "moco/ring": [*oc.MOCO, *RING],
}
SMOKE = [*oc.SMOKE, "train.epochs=1"]


def log(msg: str) -> None:
    print(f"claims: {msg}", file=sys.stderr, flush=True)


def overrides_for(name: str, seed: int, epochs: int, budget: dict, smoke: bool) -> list[str]:
    """The run's keys: the claim's, its length and seed, the resident split, then the budget's own (which win)."""
    keys = list(CLAIMS[name])
    if "objective.name=ring" in keys:
        keys.append(f"objective.anneal_epochs={epochs / 2:g}")  # the ring repository's: annealed over half the run
    keys += [f"train.epochs={epochs}", f"train.seed={seed}", "data.backend=resident",
             f"train.eval_every={max(1, epochs // 5)}", "monitor.max_images=2000", *budget["extra"]]
    if smoke:
        keys += SMOKE + {"moco": oc.SMOKE_MOCO, "ir": ["ir.num_negatives=16"]}.get(name.split("/")[0], [])
    return keys


def plan(runs: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    return [(name, seed) for seed in seeds for name in runs]


def summarise(name: str, seed: int, run_dir: Path, budget_name: str, where: str) -> dict:
    r = oc.summarise(name, seed, run_dir)
    return {**r, "budget": budget_name, "machine": where}


def table(results: list[dict], floor: dict | None, budget_name: str, where: str) -> str:
    lines = [
        "| run | seeds | kNN top-1 | linear top-1 | MI bound / ceiling (nats) | images/s |",
        "|---|---|---|---|---|---|",
    ]
    if floor:
        lines.append(f"| random init (floor) | 0 | {floor['knn_top1']:.1f} | {floor['linear_top1']:.1f} | - | - |")
    by_run: dict[str, list[dict]] = {}
    for r in results:
        by_run.setdefault(r["run"], []).append(r)
    for name, rows in by_run.items():
        rows = sorted(rows, key=lambda x: x["seed"])

        def both(key, fmt="{:.1f}"):
            return " / ".join(fmt.format(x[key]) for x in rows)

        speed = statistics.median(x["images_per_sec"] for x in rows if x["images_per_sec"]) if any(
            x["images_per_sec"] for x in rows) else None
        lines.append(f"| {name} | {' / '.join(str(x['seed']) for x in rows)} | {both('knn_top1')} | "
                     f"{both('linear_top1')} | {both('mi', '{:.2f}')} / {rows[0]['mi_ceiling']:.2f} | "
                     f"{'-' if speed is None else f'{speed:.0f}'} |")
    if results:
        r = results[0]
        lines += ["", f"Budget {budget_name}: {r['steps']} steps of {r['batch']} ({r['epochs']:.0f} epochs) per run; "
                      f"top-1 in % on the {r['num_test']:,} test images (kNN: k = 200 over {r['num_train']:,} "
                      f"training images; linear: 100 epochs on frozen features); values per seed; {where}."]
    return "\n".join(lines)


def finished(run_dir: Path) -> bool:
    return all((run_dir / p).is_file() for p in ("pretrain.json", "knn/knn.json", "linear/linear.json"))


def finished_table(out: Path, args, where: str) -> str:
    """The table of the plan's runs that have finished in ``out`` (and the floor, once scored)."""
    results = []
    for name, seed in plan(args.runs, args.seeds):
        run_dir = out / f"{name.replace('/', '_')}_s{seed}"
        if finished(run_dir):
            results.append(summarise(name, seed, run_dir, args.budget, where))
    random_dir = out / "random_init"
    floor = None
    if finished_floor := all((random_dir / p).is_file() for p in ("knn/knn.json", "linear/linear.json")):
        floor = {k: json.loads((random_dir / f).read_text())["top1"] for k, f in
                 (("knn_top1", "knn/knn.json"), ("linear_top1", "linear/linear.json"))}
    done = f"{len(results)} of {len(plan(args.runs, args.seeds))} runs finished" + ("" if finished_floor else
                                                                                    "; the floor not scored yet")
    return table(results, floor, args.budget, where) + f"\n\n({done} in {out})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--budget", choices=list(BUDGETS), default="cpu-r18half-10ep")
    ap.add_argument("--data", type=Path, default=oc.DEFAULT_DATA,
                    help="CIFAR-10 in ImageFolder layout, train/ and test/ inside (default ../shared/data/cifar10)")
    ap.add_argument("--out", type=Path, default=None, help="default runs/claims/<budget>")
    ap.add_argument("--runs", nargs="+", choices=list(CLAIMS), default=list(CLAIMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--smoke", action="store_true", help="a few steps on a few images: checks every stage")
    ap.add_argument("--table", action="store_true", help="print the table of the runs finished so far, train nothing")
    args = ap.parse_args(argv)
    budget = BUDGETS[args.budget]
    out = args.out or ROOT / "runs" / "claims" / args.budget
    where = oc.machine() if budget["device"] == "cpu" else "one GPU (see the run's pretrain.json)"
    if args.table:
        print(finished_table(out, args, where))
        return
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        sys.exit(f"error: --data {args.data} must hold train/ and test/ (ImageFolder layout); "
                 "CIFAR-10 as JPEGs is in ../shared/data/cifar10")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/views.py: idle OpenMP threads must not spin
    extra = SMOKE if args.smoke else []
    linear_epochs = 2 if args.smoke else 100
    betons = oc.prepare(args.data.resolve(), out, env)
    data = oc.data_keys(betons)
    epochs = budget["epochs"]
    results = []
    for name, seed in plan(args.runs, args.seeds):
        run_dir = out / f"{name.replace('/', '_')}_s{seed}"
        t0 = time.time()
        if not (run_dir / "pretrain.json").exists():
            oc.infoview(["pretrain", "--config", budget["config"], f"out_dir={run_dir}", data[0],
                         f"data.eval_source=beton:{betons['test']}", *overrides_for(name, seed, epochs, budget,
                                                                                      args.smoke)], env)
        oc.score(str(run_dir), run_dir / "knn", run_dir / "linear", data, extra, env, linear_epochs)
        log(f"{name} seed {seed}: done ({time.time() - t0:.0f} s)")
        results.append(summarise(name, seed, run_dir, args.budget, where))
        with open(out / "results.jsonl.tmp", "w") as f:  # the runs so far, whole lines only
            f.writelines(json.dumps(r) + "\n" for r in results)
        os.replace(out / "results.jsonl.tmp", out / "results.jsonl")
    first = out / f"{args.runs[0].replace('/', '_')}_s{args.seeds[0]}"
    random_dir = out / "random_init"
    oc.score(f"random:{first / 'checkpoints' / 'last.pt'}", random_dir / "knn", random_dir / "linear", data, extra,
             env, linear_epochs)
    floor = {"knn_top1": json.loads((random_dir / "knn" / "knn.json").read_text())["top1"],
             "linear_top1": json.loads((random_dir / "linear" / "linear.json").read_text())["top1"]}
    text = table(results, floor, args.budget, where)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {out}/results.jsonl, table.md")


if __name__ == "__main__":
    main()
