"""The objectives compared on CIFAR-10 under one budget: kNN and linear top-1, MI bound, speed.

Every run pretrains the same encoder with the same views, optimiser and
number of steps (benchmarks/objectives_cifar10.yaml), changing only the
method and the objective; then `infoview knn` and `infoview linear` score
its frozen features on the CIFAR-10 test split (all 10,000 images, against
all 50,000 training images). The random-init row scores the same encoder at
its initial weights (seed 0): the floor every run must clear.

Runs (name: what changes from the shared config):

- simclr/infonce: NT-Xent.
- simclr/ml_cpc: alpha 0.1 held, inside its valid range (the floor on the
  training rows is m / (n (m - 1) + 1) = 0.002 at batch 256).
- simclr/ml_cpc_curriculum: the authors' curriculum: alpha from 10 down to
  0.1 geometrically over the run, trained on their (log(m / alpha) - J) / alpha.
- simclr/ring: outer 0.1, inner 0.1, the ring annealed from all negatives over
  the first half of the run (the ring repository's thresholds).
- simclr/hard_negative: HCL, beta 1, tau_plus 0.1.
- simclr/debiased: DCL, tau_plus 0.1.
- moco/infonce, moco/ring: MoCo v2 (one query view, queue 4096, momentum 0.99).
- moco_v3/infonce: MoCo v3 (both views as queries, a predictor 512 wide,
  the keys of the batch as negatives, momentum 0.99 to 1 on a cosine).
- ir/infonce, ir/ring: instance recognition (one view against a memory bank of
  the 50,000 training images, t 0.07, a row replaced by its image's new
  embedding): infonce with 4096 rows drawn per view; ring on the whole bank,
  outer 0.1, inner 0.1, annealed as simclr/ring (the ring repository's IR-Ring).
  Their MI bound is the view against the whole bank (ceiling log 50,000).

simclr/infonce and simclr/ml_cpc also run with seed 1, to show the noise.

Each run's folder is kept: a finished run (its knn.json and linear.json
exist) is read, not redone, and an interrupted one resumes from its
checkpoint, so the script can be stopped and started again. Writes, in
--out: results.jsonl (one line per run), table.md (printed too) and
curves.png (online kNN top-1 on a fixed 5,000 test images, and the
certified MI bound, against step).

    python benchmarks/objectives_cifar10.py                    # all runs, ~5 min each on 2 CPU cores
    python benchmarks/objectives_cifar10.py --runs simclr/infonce moco/ring
    python benchmarks/objectives_cifar10.py --smoke --data DIR --out /tmp/x   # a seconds-long dry run
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "objectives_cifar10.yaml"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
STEPS = 800
EPOCHS = STEPS * 256 / 50000  # 4.1: the run's length in epochs, for the schedules given in epochs

# MoCo's keys: queue 4096 (16 batches: the queue refreshes within a fifth of an epoch) and momentum 0.99
# (MoCo's CIFAR demo for short runs; 0.999 barely moves the key encoder in 800 steps)
MOCO = ["method=moco", "moco.temperature=0.2", "moco.queue_size=4096", "moco.momentum=0.99"]
# MoCo v3's keys: temperature 0.2 (the reference's ViT value; its ResNet one is 1.0), momentum 0.99 rising to 1,
# a predictor as wide as the projector's hidden layer (the reference: 4096 on 256-d embeddings)
MOCO_V3 = ["method=moco_v3", "moco_v3.temperature=0.2", "moco_v3.momentum=0.99", "moco_v3.pred_hidden=512"]
# IR's keys: one view (the shared config has two), t 0.07 (IR's and the ring repository's), bank rows replaced
# (m = 0, the ring repository's: a row is seen 4 times in 4 epochs; the IR paper's m = 0.5 leaves it half random
# after the first)
IR = ["method=ir", "augment.num_views=1", "ir.temperature=0.07", "ir.bank_momentum=0"]
RUNS: dict[str, list[str]] = {
    "simclr/infonce": ["method=simclr", "objective.name=infonce"],
    "simclr/ml_cpc": ["method=simclr", "objective.name=ml_cpc", "objective.alpha=0.1"],
    "simclr/ml_cpc_curriculum": [
        "method=simclr", "objective.name=ml_cpc", "objective.alpha_start=10", "objective.alpha=0.1",
        f"objective.anneal_epochs={EPOCHS:.4g}", "objective.kl_over_alpha=true",
    ],
    "simclr/ring": ["method=simclr", "objective.name=ring", "objective.outer=0.1", "objective.inner=0.1",
                    f"objective.anneal_epochs={EPOCHS / 2:.4g}"],
    "simclr/hard_negative": ["method=simclr", "objective.name=hard_negative", "objective.beta=1",
                             "objective.tau_plus=0.1"],
    "simclr/debiased": ["method=simclr", "objective.name=debiased", "objective.tau_plus=0.1"],
    "moco/infonce": [*MOCO, "objective.name=infonce"],
    "moco/ring": [*MOCO, "objective.name=ring", "objective.outer=0.1", "objective.inner=0.1",
                  f"objective.anneal_epochs={EPOCHS / 2:.4g}"],
    "moco_v3/infonce": [*MOCO_V3, "objective.name=infonce"],
    "ir/infonce": [*IR, "ir.num_negatives=4096", "objective.name=infonce"],
    "ir/ring": [*IR, "ir.num_negatives=0", "objective.name=ring", "objective.outer=0.1", "objective.inner=0.1",
                f"objective.anneal_epochs={EPOCHS / 2:.4g}"],
}
SECOND_SEED = ("simclr/infonce", "simclr/ml_cpc")
# --smoke: every stage runs, on a few images, in seconds
SMOKE = ["train.max_steps=3", "data.batch_size=16", "data.num_workers=0", "monitor.max_images=40",
         "train.ckpt_every_steps=2"]
SMOKE_MOCO = ["moco.queue_size=32"]  # with SMOKE, for the MoCo runs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def infoview(args: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "infoview", *args]
    log("$ " + " ".join(shlex.quote(a) for a in ["infoview", *args]))
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"error: `infoview {args[0]}` failed (exit {done.returncode}); its message is above")


def prepare(data: Path, out: Path, env: dict[str, str]) -> dict[str, Path]:
    """The two .beton files, written once (infoview prepare writes under a temp name, then renames)."""
    betons = {}
    for split in ("train", "test"):
        beton = out / "data" / f"{split}.beton"
        if not beton.exists():
            infoview(["prepare", f"folder:{data}", str(beton), f"split={split}", "write_mode=raw"], env)
        betons[split] = beton
    return betons


def pretrain_and_score(run_dir: Path, overrides: list[str], betons: dict[str, Path], extra: list[str],
                       env: dict[str, str], linear_epochs: int) -> None:
    data = data_keys(betons)
    if not (run_dir / "pretrain.json").exists():
        infoview(["pretrain", "--config", str(CONFIG), f"out_dir={run_dir}", data[0],
                  f"data.eval_source=beton:{betons['test']}", *overrides, *extra], env)
    score(str(run_dir), run_dir / "knn", run_dir / "linear", data, extra, env, linear_epochs)


def data_keys(betons: dict[str, Path]) -> list[str]:
    """data.source (the train .beton) and data.test_source (the test .beton) for knn and linear."""
    return [f"data.source=beton:{betons['train']}", f"data.test_source=beton:{betons['test']}"]


def score(backbone: str, knn_dir: Path, linear_dir: Path, data: list[str], extra: list[str],
          env: dict[str, str], linear_epochs: int) -> None:
    workers = [a for a in extra if a.startswith("data.num_workers")]
    if not (knn_dir / "knn.json").exists():
        infoview(["knn", f"backbone={backbone}", f"out_dir={knn_dir}", *data, *workers, "train.progress=false"],
                 env)
    if not (linear_dir / "linear.json").exists():
        infoview(["linear", f"backbone={backbone}", f"out_dir={linear_dir}", *data, *workers,
                  f"train.epochs={linear_epochs}", "train.progress=false"], env)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summarise(name: str, seed: int, run_dir: Path) -> dict:
    pre = json.loads((run_dir / "pretrain.json").read_text())
    knn = json.loads((run_dir / "knn" / "knn.json").read_text())
    lin = json.loads((run_dir / "linear" / "linear.json").read_text())
    rows = read_metrics(run_dir)
    speeds = [float(r["images_per_sec"]) for r in rows if r.get("images_per_sec")]
    return {
        "run": name, "seed": seed, "steps": pre["steps"], "epochs": pre["epochs"], "batch": pre["global_batch"],
        "num_test": knn["num_test"], "num_train": knn["num_train"],
        "knn_top1": knn["top1"], "linear_top1": lin["top1"],
        "mi": pre["mi"], "mi_ceiling": pre["mi_ceiling"], "mi_estimate": pre.get("mi_estimate"),
        "images_per_sec": statistics.median(speeds) if speeds else None,
    }


def table(results: list[dict], floor: dict, machine: str) -> str:
    lines = [
        "| run | seed | kNN top-1 | linear top-1 | MI bound / ceiling (nats) | images/s |",
        "|---|---|---|---|---|---|",
        f"| random init (floor) | 0 | {floor['knn_top1']:.1f} | {floor['linear_top1']:.1f} | - | - |",
    ]
    for r in results:
        speed = f"{r['images_per_sec']:.0f}" if r["images_per_sec"] else "-"
        lines.append(f"| {r['run']} | {r['seed']} | {r['knn_top1']:.1f} | {r['linear_top1']:.1f} | "
                     f"{r['mi']:.2f} / {r['mi_ceiling']:.2f} | {speed} |")
    if results:
        r = results[0]
        lines.append("")
        lines.append(f"{r['steps']} steps of {r['batch']} ({r['epochs']:.1f} epochs) per run; top-1 in % on the "
                     f"{r['num_test']:,} test images (kNN: k = 200 over {r['num_train']:,} training images; "
                     f"linear: 100 epochs on frozen features); {machine}.")
    return "\n".join(lines)


def plot(run_dirs: dict[str, Path], floor_knn: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_knn, ax_mi) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        knn = [(0, floor_knn)] if floor_knn is not None else []
        knn += [(int(r["step"]), float(r["online_knn_top1"])) for r in rows if r.get("online_knn_top1")]
        mi = [(int(r["step"]), float(r["mi"])) for r in rows if r.get("mi")]
        style = "--" if label.startswith("moco") else ":" if label.startswith("ir") else "-"
        if knn:
            ax_knn.plot(*zip(*knn), style, marker="o", ms=3, label=label)
        if mi:
            ax_mi.plot(*zip(*mi), style, label=label)
    ax_knn.set(xlabel="step", ylabel="online kNN top-1 (%), 5,000 test images",
               title="kNN top-1 (step 0: the random-init encoder, scored on all images)")
    ax_mi.set(xlabel="step", ylabel="nats",
              title="certified MI bound: the batch's cross-view matrix (ir: the view against the whole bank)")
    for ax in (ax_knn, ax_mi):
        ax.grid(alpha=0.3)
    ax_knn.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{os.cpu_count()} cores of {cpu}, torch {torch.__version__}, no GPU"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="CIFAR-10 in ImageFolder layout, train/ and test/ inside (default ../shared/data/cifar10)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "objectives_cifar10")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--no-second-seed", action="store_true", help="skip the seed-1 runs")
    ap.add_argument("--smoke", action="store_true", help="a few steps on a few images: checks every stage")
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        sys.exit(f"error: --data {args.data} must hold train/ and test/ (ImageFolder layout); "
                 "CIFAR-10 as JPEGs is in ../shared/data/cifar10")
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/views.py: idle OpenMP threads must not spin
    args.out.mkdir(parents=True, exist_ok=True)
    extra = SMOKE if args.smoke else []
    linear_epochs = 2 if args.smoke else 100
    betons = prepare(args.data.resolve(), args.out, env)
    data = data_keys(betons)

    plan = [(name, 0) for name in args.runs]
    if not args.no_second_seed:
        plan += [(name, 1) for name in SECOND_SEED if name in args.runs]
    results, run_dirs = [], {}
    for name, seed in plan:
        run_dir = args.out / f"{name.replace('/', '_')}_s{seed}"
        t0 = time.time()
        smoke_moco = SMOKE_MOCO if args.smoke and "method=moco" in RUNS[name] else []
        overrides = RUNS[name] + [f"train.seed={seed}"] + smoke_moco
        pretrain_and_score(run_dir, overrides, betons, extra, env, linear_epochs)
        log(f"{name} seed {seed}: done ({time.time() - t0:.0f} s)")
        results.append(summarise(name, seed, run_dir))
        if seed == 0:
            run_dirs[name] = run_dir
    first = args.out / f"{plan[0][0].replace('/', '_')}_s0"
    random_dir = args.out / "random_init"
    score(f"random:{first / 'checkpoints' / 'last.pt'}", random_dir / "knn", random_dir / "linear", data, extra,
          env, linear_epochs)
    floor = {"knn_top1": json.loads((random_dir / "knn" / "knn.json").read_text())["top1"],
             "linear_top1": json.loads((random_dir / "linear" / "linear.json").read_text())["top1"]}

    with open(args.out / "results.jsonl", "w") as f:
        f.write(json.dumps({"run": "random_init", "seed": 0, **floor}) + "\n")
        for r in results:
            f.write(json.dumps(r) + "\n")
    text = table(results, floor, machine())
    (args.out / "table.md").write_text(text + "\n")
    plot(run_dirs, floor["knn_top1"], args.out / "curves.png")
    print(text)
    print(f"\nwritten: {args.out}/results.jsonl, table.md, curves.png")


if __name__ == "__main__":
    main()
