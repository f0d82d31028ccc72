"""The steps of benchmarks/gpu_check.py: each runs its commands through a ``Step`` and records figures and targets."""
from __future__ import annotations

import csv
import json
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _gpu_check_common import ROOT
from _gpu_check_runner import MIN_STEP_S, Context, Step, last_json

CIFAR_CONFIG = ROOT / "benchmarks" / "objectives_cifar10.yaml"
GPU_TESTS_ON_CPU = "INFOVIEW_GPU_TESTS_ON_CPU"
RATIO_TARGET = 0.95  # train_step: pipeline img/s over model-only img/s
VIEWS_TARGET = 20.0  # views: ours over lightly's CPU pipeline with all cores
TINY_MODEL = ["model.kwargs.channels=[8,16,32,64]", "model.kwargs.layers=[1,1,1,1]"]


def step_pytest(ctx: Context, step: Step) -> None:
    xml_path = ctx.work / "pytest.xml"
    cmd = [ctx.py, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={xml_path}"]
    env = {GPU_TESTS_ON_CPU: "1", "CUDA_VISIBLE_DEVICES": ""} if ctx.dry else {}
    if ctx.dry:
        step.rec["notes"].append(f"{GPU_TESTS_ON_CPU}=1: the gpu tests that take the gpu_device fixture run on the "
                                 "CPU (torch.compile with aot_eager, DDP on gloo); the rest are skipped")
    res = step.run(cmd, "pytest -m gpu", env)
    if not xml_path.is_file():
        if step.rec["status"] == "running":
            step.fail("pytest wrote no junit report")
        return
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skips = [], {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            key = "failed" if "failure" in kinds else "errors"
            counts[key] += 1
            node = kinds.get("failure", kinds.get("error"))
            failures.append({"test": name, "kind": key,
                             "message": (node.get("message") or node.text or "").strip().splitlines()[0][:300]
                             if (node.get("message") or node.text) else ""})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "").strip()[:200]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    step.rec["figures"] = {**counts, "selected": sum(counts.values()), "failures": failures,
                           "skip_reasons": skips}
    summary = [ln for ln in res["stdout"].splitlines() if " in " in ln and ("passed" in ln or "failed" in ln
                                                                           or "error" in ln or "skipped" in ln)]
    if summary:
        step.rec["figures"]["pytest_summary"] = summary[-1].strip("= ").strip()
    if counts["failed"] or counts["errors"]:
        step.fail(f"{counts['failed']} failed, {counts['errors']} errors among {sum(counts.values())} gpu tests: "
                  + "; ".join(f["test"] for f in failures[:5]))
    elif counts["passed"] == 0 and step.rec["status"] == "running":
        step.fail("no gpu test passed (none selected, or all skipped)")


def train_step_cmd(ctx: Context, case: str) -> tuple[list[str], str]:
    cmd = [ctx.py, "benchmarks/train_step.py", "--case", case, "--device", ctx.device,
           "--set", "data.backend=pytorch"]
    if case == "r18-32":
        source = f"beton:{ctx.data / 'train.beton'}"
    else:
        source = f"folder:{ctx.data / ('photos' if ctx.manifest.get('photos') else 'views')}"
    cmd += ["--set", f"data.source={source}"]
    if ctx.dry:
        cmd += ["--steps", "2", "--warmup", "1", "--set", "data.num_workers=0", "--set", "train.threads=1",
                *(x for kv in TINY_MODEL for x in ("--set", kv))]
        if case == "r18-32":
            cmd += ["--set", "data.batch_size=16"]
        else:
            cmd += ["--set", "data.batch_size=8", "--set", "augment.size=64", "--set", "data.resolution=72",
                    "--min-epoch-steps", "4"]
    return cmd, source


def run_for_json(step: Step, cmd: list[str], what: str) -> dict | None:
    """Run a benchmark that prints one JSON line; None (and the step failed) when it printed none."""
    out = last_json(step.run(cmd, what)["stdout"])
    if out is None and step.rec["status"] == "running":
        step.fail(f"{what.split()[0]} printed no JSON line")
    return out


def step_train(ctx: Context, step: Step, case: str) -> None:
    cmd, source = train_step_cmd(ctx, case)
    if case == "r50-224" and not ctx.manifest.get("photos"):
        step.rec["notes"].append(ctx.manifest.get("photos_note", "no photos: CIFAR-10 JPEGs at 256 px instead"))
    out = run_for_json(step, cmd, f"benchmarks/train_step.py --case {case}")
    if out is None:
        return
    keep = ("device", "arch", "size", "global_batch", "steps", "warmup", "pipeline_img_per_s", "model_only_img_per_s",
            "ratio", "data_share", "peak_mem_mb_pipeline", "peak_mem_mb_model_only", "loader_backend", "data",
            "loader_resolution", "precision", "channels_last", "compile", "torch")
    step.rec["figures"] = {k: out.get(k) for k in keep}
    ratio = out.get("ratio")
    step.target("pipeline / model-only images/s", ratio, f">= {RATIO_TARGET}",
                None if ratio is None else ratio >= RATIO_TARGET)


def step_views(ctx: Context, step: Step) -> None:
    cmd = [ctx.py, "benchmarks/views.py", "--device", ctx.device, "--data", str(ctx.data / "views")]
    if not ctx.peer.get("views"):
        cmd.append("--no-peer")
        step.rec["notes"].append("peer missing (" + ctx.peer.get("views_error", "--no-peer")
                                 + "): ours only (views.py --no-peer)")
    if ctx.dry:
        cmd += ["--sizes", "32", "--images", "32", "--batch", "16", "--repeats", "1", "--workers", "1"]
    out = run_for_json(step, cmd, "benchmarks/views.py")
    if out is None:
        return
    step.rec["figures"] = {k: out.get(k) for k in ("device", "peer", "batch", "repeats", "cpu_cores", "results")}
    for size, row in (out.get("results") or {}).items():
        ratio = row.get("ratio")
        if ratio is None:
            step.target(f"{size} px: ours / lightly (CPU, all cores)", None, f">= {VIEWS_TARGET:g}x", None,
                        f"not checked: peer missing; ours {row.get('ours_views_per_s')} views/s")
        else:
            step.target(f"{size} px: ours / lightly (CPU, all cores)", ratio, f">= {VIEWS_TARGET:g}x",
                        ratio >= VIEWS_TARGET)


def step_objectives(ctx: Context, step: Step) -> None:
    cmd = [ctx.py, "benchmarks/objectives.py", "--device", ctx.device]
    if not ctx.peer.get("objectives"):
        cmd.append("--no-peer")
        step.rec["notes"].append("peer missing (" + ctx.peer.get("objectives_error", "--no-peer")
                                 + "): no check against lightly's NT-Xent (objectives.py --no-peer)")
    if ctx.dry:
        cmd += ["--rows", "2048", "--repeats", "1", "--dim", "32", "--contenders", "infonce", "ml_cpc"]
        if ctx.peer.get("objectives"):
            cmd.append("lightly_ntxent")
    out = run_for_json(step, cmd, "benchmarks/objectives.py")
    if out is None:
        return
    step.rec["figures"] = {k: out.get(k) for k in ("device_name", "lightly", "dim", "temperature", "repeats",
                                                    "results", "checks", "all_met")}
    for name, check in (out.get("checks") or {}).items():
        step.target(f"{name} (time, memory)", [check.get("time"), check.get("memory")],
                    f"<= {check.get('target')}x", check.get("met"))


def _metrics_speed(run_dir: Path) -> dict:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        speeds = [float(r["images_per_sec"]) for r in csv.DictReader(f) if r.get("images_per_sec")]
    if not speeds:
        return {}
    return {"images_per_s_median": round(statistics.median(speeds), 1), "images_per_s_last": round(speeds[-1], 1),
            "images_per_s_rows": len(speeds)}


def step_cifar10(ctx: Context, step: Step) -> None:
    train, test = ctx.data / "train.beton", ctx.data / "test.beton"
    run_dir = ctx.work / "cifar10_simclr"
    steps = 3 if ctx.dry else ctx.args.cifar_steps
    workers = f"data.num_workers={ctx.workers}"
    pre = [ctx.py, "-m", "infoview", "pretrain", "--config", str(CIFAR_CONFIG), f"out_dir={run_dir}",
           f"data.source=beton:{train}", "data.backend=pytorch", workers, f"train.device={ctx.device}",
           f"train.max_steps={steps}", "train.eval_every=0", "train.ckpt_every_steps=0", "train.progress=false",
           "train.log_every=1" if ctx.dry else "train.log_every=10"]
    if ctx.dry:
        pre += ["data.batch_size=16", "train.threads=1", *TINY_MODEL, "model.proj_hidden=64", "model.proj_dim=32"]
    reserve = 2 * MIN_STEP_S[ctx.mode]
    t0 = time.perf_counter()
    res = step.run(pre, "infoview pretrain", reserve_after=reserve)
    wall = time.perf_counter() - t0
    result_path = run_dir / "pretrain.json"
    figures: dict = {"steps_asked": steps}
    if res["returncode"] == 0 and result_path.is_file():
        r = json.loads(result_path.read_text())
        figures.update({k: r.get(k) for k in ("steps", "epochs", "global_batch", "loss", "mi", "mi_ceiling")})
        figures.update(_metrics_speed(run_dir))
        figures["pretrain_wall_s"] = round(wall, 1)
        if figures.get("steps") and figures.get("global_batch"):
            figures["images_per_s_incl_startup"] = round(figures["steps"] * figures["global_batch"] / wall, 1)
    step.rec["figures"] = figures
    if res["returncode"] != 0 or not result_path.is_file():
        return
    knn_common = [f"data.source=beton:{train}", f"data.test_source=beton:{test}", "data.backend=pytorch", workers,
                  f"train.device={ctx.device}", "train.progress=false"] + (["knn.k=10"] if ctx.dry else [])
    tops = {}
    for tag, backbone, after in (("knn", str(run_dir), MIN_STEP_S[ctx.mode]),
                                 ("knn_random_init", f"random:{run_dir / 'checkpoints' / 'last.pt'}", 0.0)):
        out_dir = ctx.work / tag
        r = step.run([ctx.py, "-m", "infoview", "knn", f"backbone={backbone}", f"out_dir={out_dir}", *knn_common],
                     f"infoview knn ({tag})", reserve_after=after)
        if r["returncode"] == 0 and (out_dir / "knn.json").is_file():
            k = json.loads((out_dir / "knn.json").read_text())
            tops[tag] = k
    if "knn" in tops:
        k = tops["knn"]
        figures.update({"knn_top1": k.get("top1"), "knn_top5": k.get("top5"), "knn_k": k.get("k"),
                        "num_train": k.get("num_train"), "num_test": k.get("num_test")})
    if "knn_random_init" in tops:
        figures["knn_top1_random_init"] = tops["knn_random_init"].get("top1")
    if "knn" in tops and "knn_random_init" in tops:
        a, b = figures["knn_top1"], figures["knn_top1_random_init"]
        step.target("kNN top-1: pretrained against the same encoder at its initial weights", a, f"> {b}",
                    None if a is None or b is None else a > b)


STEPS = [
    ("pytest_gpu", "CUDA tests (pytest -m gpu)", step_pytest),
    ("train_step_r18_32", "train step, ResNet-18 at 32 px (CIFAR-10 .beton)", lambda c, s: step_train(c, s, "r18-32")),
    ("train_step_r50_224", "train step, ResNet-50 at 224 px (COCO128 photos)", lambda c, s: step_train(c, s, "r50-224")),
    ("views", "SimCLR views per second", step_views),
    ("objectives", "objectives: forward + backward", step_objectives),
    ("cifar10_simclr", "SimCLR on CIFAR-10, then kNN", step_cifar10),
]
STEP_NAMES = [s[0] for s in STEPS]
