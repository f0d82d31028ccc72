"""Distillation on digits: a student distilled from infoview's demo encoder against the same student by SSL alone.

Runs, on scikit-learn's digits (no download), in --out:

- teacher: `infoview pretrain --config demo` (SimCLR + ML-CPC, a quarter-width ResNet-18, 20 epochs);
- crd_infonce, crd_ml_cpc: `infoview distill --config distill_digits` (a half-width student of the teacher,
  the teacher frozen) with objective.name=infonce (CRD) and ml_cpc (alpha 0.1), 20 epochs;
- ssl: the same student architecture pretrained by `infoview pretrain --config demo` alone, 20 epochs:
  the same budget of steps and batch, each with its own recipe's optimiser (CRD's SGD, the demo's AdamW);
- and `infoview linear` on each (digits' test split, the default probe), plus the student at its random init.

Each run's folder is kept and a finished one is read, not redone. Writes results.jsonl and table.md
(printed too). ~10 minutes on 2 CPU cores.

    python benchmarks/distill_digits.py --out runs/distill_digits_bench
    python benchmarks/distill_digits.py --smoke --out /tmp/d   # every stage in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ["student.arch=resnet18", "student.cifar_stem=true", "student.kwargs.channels=[8,16,32,64]"]
SMOKE = ["train.epochs=1", "train.max_steps=3", "train.eval_every=0"]


def infoview(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "infoview", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}")


def linear(backbone: str, out: Path, smoke: bool) -> dict:
    if not (out / "linear.json").is_file():
        infoview(["linear", f"backbone={backbone}", f"out_dir={out}", *(["train.epochs=1"] if smoke else [])])
    return json.loads((out / "linear.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "distill_digits_bench")
    ap.add_argument("--smoke", action="store_true", help="a few steps per run: checks every stage")
    args = ap.parse_args(argv)
    out, extra = args.out.resolve(), (SMOKE if args.smoke else [])
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        "teacher": ["pretrain", "--config", "demo"],
        "crd_infonce": ["distill", "--config", "distill_digits", f"teacher={out / 'teacher'}",
                        "objective.name=infonce"],
        "crd_ml_cpc": ["distill", "--config", "distill_digits", f"teacher={out / 'teacher'}"],
        "ssl": ["pretrain", "--config", "demo", "model.kwargs.channels=[8,16,32,64]"],
    }
    rows = []
    for name, cmd in runs.items():
        run = out / name
        if not (run / "pretrain.json").is_file():
            infoview([*cmd, f"out_dir={run}", "train.progress=false", *extra])
        result = json.loads((run / "pretrain.json").read_text())
        probe = linear(str(run), run / "linear", args.smoke)
        rows.append({"run": name, "steps": result["steps"], "mi": result["mi"], "mi_ceiling": result["mi_ceiling"],
                     "linear_top1": probe["top1"]})
    probe = linear(f"random:{out / 'ssl'}", out / "ssl" / "linear_random", args.smoke)
    rows.append({"run": "student at random init", "steps": 0, "mi": None, "mi_ceiling": None,
                 "linear_top1": probe["top1"]})
    with open(out / "results.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    what = {"teacher": "teacher (demo encoder, quarter-width ResNet-18)",
            "crd_infonce": "student distilled, CRD with infonce", "crd_ml_cpc": "student distilled, CRD with ml_cpc",
            "ssl": "student by SSL alone (SimCLR + ML-CPC)"}
    lines = [f"digits, linear probe top-1 on the test split; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; `python benchmarks/distill_digits.py`", "",
             "| run | steps | MI bound (nats) / ceiling | linear top-1 (%) |", "|---|---:|---:|---:|"]
    for row in rows:
        mi = f"{row['mi']:.2f} / {row['mi_ceiling']:.2f}" if row["mi"] is not None else "-"
        lines.append(f"| {what.get(row['run'], row['run'])} | {row['steps']} | {mi} | {row['linear_top1']:.1f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
