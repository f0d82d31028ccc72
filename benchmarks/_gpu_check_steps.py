"""The steps of benchmarks/gpu_check.py, in order of value: each runs its commands through a ``Step`` and records
figures and targets. ``ctx.cifar`` is the CIFAR-10 ImageFolder (train/, test/) unpacked from the carried pack."""
from __future__ import annotations

import csv
import json
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _gpu_check_runner import MIN_STEP_S, Context, Step, last_json

PRESET = "simclr_infonce_cifar10_1gpu"
GPU_TESTS_ON_CPU = "INFOVIEW_GPU_TESTS_ON_CPU"
RATIO_TARGET = 0.95  # train_step: pipeline img/s over model-only img/s
VS_LIGHTLY_TARGET = 3.0  # SimCLR end to end: ours over lightly's own loop
KNN_TARGET, MINUTES_TARGET, EPOCHS_TARGET = 85.0, 8.0, 200  # the 200-epoch run
VIEWS_TARGET = 20.0  # views: ours over lightly's CPU pipeline with all cores
TINY_MODEL = ["model.kwargs.channels=[8,16,32,64]", "model.kwargs.layers=[1,1,1,1]"]
DRY_PRETRAIN = ["data.batch_size=16", "train.threads=1", *TINY_MODEL, "model.proj_hidden=64", "model.proj_dim=32",
                "data.num_workers=0"]


#: the gpu tests the CPU dry run leaves out (pytest -k): seconds of compiling each on a CPU, run on the GPU
DRY_RUN_LEAVES_OUT = "not compiled_step_matches_eager and not channels_last_step_matches"


def step_pytest(ctx: Context, step: Step) -> None:
    xml_path = ctx.work / "pytest.xml"
    cmd = [ctx.py, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={xml_path}"]
    env = {GPU_TESTS_ON_CPU: "1", "CUDA_VISIBLE_DEVICES": ""} if ctx.dry else {}
    if ctx.dry:
        # the whole-step comparisons (compiled, channels_last) take 30 of this step's 45 s on a 2-core CPU, most of
        # it compiling; the dry run checks that the step runs and reads its report, the GPU run runs every test
        cmd += ["-k", DRY_RUN_LEAVES_OUT]
        step.rec["notes"].append(f"{GPU_TESTS_ON_CPU}=1: the gpu tests that take the gpu_device fixture run on the "
                                 "CPU (DDP on gloo), but for the whole-step comparisons under torch.compile and "
                                 "channels_last (-k '" + DRY_RUN_LEAVES_OUT + "'); the rest are skipped")
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
            text = (node.get("message") or node.text or "").strip()
            failures.append({"test": name, "kind": key, "message": text.splitlines()[0][:300] if text else ""})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "").strip()[:200]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    step.rec["figures"] = {**counts, "selected": sum(counts.values()), "failures": failures, "skip_reasons": skips}
    summary = [ln for ln in res["stdout"].splitlines() if " in " in ln and any(
        w in ln for w in ("passed", "failed", "error", "skipped"))]
    if summary:
        step.rec["figures"]["pytest_summary"] = summary[-1].strip("= ").strip()
    if counts["failed"] or counts["errors"]:
        step.fail(f"{counts['failed']} failed, {counts['errors']} errors among {sum(counts.values())} gpu tests: "
                  + "; ".join(f["test"] for f in failures[:5]))
    elif counts["passed"] == 0 and step.rec["status"] == "running":
        step.fail("no gpu test passed (none selected, or all skipped)")


def run_for_json(step: Step, cmd: list[str], what: str, **kw) -> dict | None:
    """Run a benchmark that prints one JSON line; None (and the step failed) when it printed none."""
    out = last_json(step.run(cmd, what, **kw)["stdout"])
    if out is None and step.rec["status"] == "running":
        step.fail(f"{what.split()[0]} printed no JSON line")
    return out


# --------------------------------------------------------------------------- the training step


def train_step_cmd(ctx: Context, case: str, extra: list[str] = ()) -> list[str]:
    cmd = [ctx.py, "benchmarks/train_step.py", "--case", case, "--device", ctx.device]
    if case == "r18-32":
        source = f"folder:{ctx.cifar}"
    else:
        source = f"folder:{ctx.data / 'photos'}" if ctx.manifest.get("photos") else f"folder:{ctx.cifar}"
    cmd += ["--set", f"data.source={source}", *(x for kv in extra for x in ("--set", kv))]
    if ctx.dry:
        cmd += ["--steps", "2", "--warmup", "1", "--set", "data.num_workers=0", "--set", "train.threads=1",
                *(x for kv in TINY_MODEL for x in ("--set", kv))]
        if case == "r18-32":
            cmd += ["--set", "data.batch_size=16"]
        else:
            cmd += ["--set", "data.batch_size=8", "--set", "augment.size=64", "--set", "data.resolution=72",
                    "--min-epoch-steps", "4"]
    return cmd


TRAIN_KEEP = ("device", "arch", "size", "global_batch", "steps", "warmup", "pipeline_img_per_s", "model_only_img_per_s",
              "ratio", "data_share", "peak_mem_mb_pipeline", "peak_mem_mb_model_only", "loader_backend", "data",
              "loader_resolution", "precision", "channels_last", "compile", "optimizer_fused", "torch")


def step_train(ctx: Context, step: Step, case: str) -> None:
    if case == "r50-224" and not ctx.manifest.get("photos"):
        step.rec["notes"].append(ctx.manifest.get("photos_note", "no photos: CIFAR-10 JPEGs at 256 px instead"))
    out = run_for_json(step, train_step_cmd(ctx, case), f"benchmarks/train_step.py --case {case}")
    if out is None:
        return
    step.rec["figures"] = {k: out.get(k) for k in TRAIN_KEEP}
    ratio = out.get("ratio")
    step.target("pipeline / model-only images/s", ratio, f">= {RATIO_TARGET}",
                None if ratio is None else ratio >= RATIO_TARGET)
    if case == "r18-32":
        ctx.results["r18_pipeline_img_per_s"] = out.get("pipeline_img_per_s")


def step_modes(ctx: Context, step: Step) -> None:
    """r18-32 under torch.compile's default mode and reduce-overhead (CUDA graphs), against eager (step 2)."""
    eager = ctx.results.get("r18_pipeline_img_per_s")
    figures: dict = {"eager_pipeline_img_per_s": eager}
    env = {"TORCHDYNAMO_DISABLE": "1"} if ctx.dry else None
    if ctx.dry:
        step.rec["notes"].append("dry run: TORCHDYNAMO_DISABLE=1 (torch.compile a no-op): the plumbing only")
    for mode in ("default", "reduce-overhead"):
        extra = ["train.compile=true", f"train.compile_mode={mode}"]
        out = run_for_json(step, train_step_cmd(ctx, "r18-32", extra), f"benchmarks/train_step.py compile {mode}",
                           env_extra=env)
        if out is None:
            figures[mode] = None
            continue
        figures[mode] = {k: out.get(k) for k in ("pipeline_img_per_s", "model_only_img_per_s", "ratio",
                                                 "peak_mem_mb_pipeline")}
        if eager:
            figures[mode]["speedup_vs_eager"] = round(out["pipeline_img_per_s"] / eager, 3)
    step.rec["figures"] = figures


# --------------------------------------------------------------------------- objectives, views


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
    step.rec["figures"] = {k: out.get(k) for k in ("device_name", "lightly", "lse_path", "dim", "temperature",
                                                    "repeats", "results", "checks", "all_met")}
    for name, check in (out.get("checks") or {}).items():
        step.target(f"{name} (time, memory)", [check.get("time"), check.get("memory")],
                    f"<= {check.get('target')}x", check.get("met"))


def step_views(ctx: Context, step: Step) -> None:
    cmd = [ctx.py, "benchmarks/views.py", "--device", ctx.device, "--data", str(ctx.cifar / "train")]
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
        step.target(f"{size} px: ours / lightly (CPU, all cores)", ratio, f">= {VIEWS_TARGET:g}x",
                    None if ratio is None else ratio >= VIEWS_TARGET,
                    "" if ratio is not None else f"not checked: peer missing; ours {row.get('ours_views_per_s')} views/s")


# --------------------------------------------------------------------------- SimCLR on CIFAR-10, end to end


def metrics_speed(run_dir: Path) -> dict:
    """Images/s from a run's metrics.csv: the median over its rows after the first (cuDNN's choices, warm-up)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        speeds = [float(r["images_per_sec"]) for r in csv.DictReader(f) if r.get("images_per_sec")]
    kept = speeds[1:] or speeds
    if not kept:
        return {}
    return {"images_per_s_median": round(statistics.median(kept), 1), "images_per_s_rows": len(kept)}


def pretrain_cmd(ctx: Context, run_dir: Path, *extra: str) -> list[str]:
    cmd = [ctx.py, "-m", "infoview", "pretrain", "--config", PRESET, f"out_dir={run_dir}",
           f"data.source=folder:{ctx.cifar}", f"train.device={ctx.device}", "train.progress=false",
           f"data.num_workers={ctx.workers}", *extra]
    return cmd + (DRY_PRETRAIN if ctx.dry else [])


def read_pretrain(run_dir: Path) -> dict:
    path = run_dir / "pretrain.json"
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    return {k: r.get(k) for k in ("steps", "epochs", "global_batch", "loss", "mi", "mi_ceiling", "peak_gpu_mem_mb")}


def step_vs_lightly(ctx: Context, step: Step) -> None:
    """`infoview pretrain` with the one-GPU preset for a few hundred steps, then lightly's own loop, same model."""
    run_dir = ctx.work / "simclr_e2e"
    steps = 4 if ctx.dry else 300
    figures: dict = {}
    res = step.run(pretrain_cmd(ctx, run_dir, f"train.max_steps={steps}", "train.log_every=2" if ctx.dry else
                                "train.log_every=20"), "infoview pretrain (end to end)",
                   reserve_after=MIN_STEP_S[ctx.mode])
    if res["returncode"] == 0:
        figures["ours"] = {**read_pretrain(run_dir), **metrics_speed(run_dir)}
    if not ctx.peer.get("views"):  # lightly's SimCLRTransform, which its loop needs (NTXentLoss: objectives)
        step.rec["notes"].append("peer missing (" + ctx.peer.get("views_error", "lightly") + "): ours only")
    else:
        cmd = [ctx.py, "benchmarks/lightly_simclr.py", "--data", str(ctx.cifar / "train"), "--device", ctx.device]
        if ctx.dry:
            cmd += ["--steps", "2", "--warmup", "1", "--batch", "16", "--workers", "1"]
        out = run_for_json(step, cmd, "benchmarks/lightly_simclr.py")
        if out is not None:
            figures["lightly"] = {k: out.get(k) for k in ("lightly", "images_per_s", "peak_gpu_mem_mb", "workers",
                                                          "batch", "precision")}
    step.rec["figures"] = figures
    ours = (figures.get("ours") or {}).get("images_per_s_median")
    peer = (figures.get("lightly") or {}).get("images_per_s")
    ratio = round(ours / peer, 2) if ours and peer else None
    step.target("SimCLR images/s, end to end: infoview / lightly's loop", ratio, f">= {VS_LIGHTLY_TARGET:g}x",
                None if ratio is None else ratio >= VS_LIGHTLY_TARGET,
                "" if ratio is not None else "not checked: a side did not run")
    if ours:
        ctx.results["e2e_img_per_s"] = ours


def epochs_that_fit(ctx: Context, seconds: float, train_images: int) -> tuple[int, str]:
    """Epochs of the preset that fit in ``seconds`` at the end-to-end speed measured before (200 at most)."""
    speed = ctx.results.get("e2e_img_per_s") or ctx.results.get("r18_pipeline_img_per_s")
    if ctx.dry:
        return 2, "dry run: 2 epochs"
    if ctx.args.cifar_epochs:
        return ctx.args.cifar_epochs, f"--cifar-epochs {ctx.args.cifar_epochs}"
    if not speed:
        return 0, "no speed measured before it (train_step_r18_32 and simclr_vs_lightly did not run): not started"
    fit = int(0.9 * seconds * speed / train_images)  # 10% for start-up and the epoch-end saves
    return min(EPOCHS_TARGET, fit), f"{fit} epochs fit in {seconds:.0f} s at {speed:,.0f} img/s"


def step_cifar10_200(ctx: Context, step: Step) -> None:
    """The preset for 200 epochs (or as many as the budget holds), then kNN on all 50,000 / 10,000 images."""
    run_dir = ctx.work / "simclr_200"
    train_images = ctx.manifest["cifar10_pack"]["train"]["images"]
    knn_reserve = 8.0 if ctx.dry else 60.0
    epochs, why = epochs_that_fit(ctx, step.deadline - time.monotonic() - knn_reserve, train_images)
    figures: dict = {"epochs_asked": epochs, "why": why, "train_images": train_images}
    step.rec["figures"] = figures
    if epochs < 1:
        step.fail(f"not run: {why}")
        return
    t0 = time.perf_counter()
    res = step.run(pretrain_cmd(ctx, run_dir, f"train.epochs={epochs}", "train.log_every=50"),
                   "infoview pretrain (CIFAR-10)", reserve_after=knn_reserve)
    figures["pretrain_wall_s"] = round(time.perf_counter() - t0, 1)
    if res["returncode"] != 0:
        return
    figures.update(read_pretrain(run_dir))
    figures.update(metrics_speed(run_dir))
    out_dir = ctx.work / "knn"
    r = step.run([ctx.py, "-m", "infoview", "knn", f"backbone={run_dir}", f"out_dir={out_dir}",
                  f"data.source=folder:{ctx.cifar}", "data.backend=resident", f"data.num_workers={ctx.workers}",
                  f"train.device={ctx.device}", "train.progress=false", "knn.k=200"], "infoview knn")
    if r["returncode"] == 0 and (out_dir / "knn.json").is_file():
        k = json.loads((out_dir / "knn.json").read_text())
        figures.update({"knn_top1": k.get("top1"), "knn_top5": k.get("top5"), "knn_k": k.get("k"),
                        "num_train": k.get("num_train"), "num_test": k.get("num_test")})
    minutes = figures["pretrain_wall_s"] / 60
    full = epochs >= EPOCHS_TARGET
    top1 = figures.get("knn_top1")
    step.target(f"kNN top-1 after {epochs} epochs (k = 200, all images)", top1, f">= {KNN_TARGET:g}",
                None if top1 is None or not full else top1 >= KNN_TARGET,
                "" if full else f"not checked: {epochs} of {EPOCHS_TARGET} epochs ({why})")
    step.target(f"minutes of training for {epochs} epochs", round(minutes, 2), f"<= {MINUTES_TARGET:g}",
                minutes <= MINUTES_TARGET if full else None,
                "" if full else f"not checked: {epochs} of {EPOCHS_TARGET} epochs; "
                f"{EPOCHS_TARGET} at this pace: about {minutes * EPOCHS_TARGET / epochs:.1f} min (an estimate)")


STEPS = [
    ("pytest_gpu", "CUDA tests (pytest -m gpu)", step_pytest),
    ("train_step_r18_32", "train step, ResNet-18 at 32 px (CIFAR-10 held on the GPU)",
     lambda c, s: step_train(c, s, "r18-32")),
    ("train_step_r50_224", "train step, ResNet-50 at 224 px (photos decoded on the GPU)",
     lambda c, s: step_train(c, s, "r50-224")),
    ("objectives", "objectives: forward + backward", step_objectives),
    ("simclr_vs_lightly", "SimCLR end to end against lightly's own loop", step_vs_lightly),
    ("cifar10_simclr_200", "SimCLR on CIFAR-10 for 200 epochs, then kNN", step_cifar10_200),
    ("compile_modes", "the train step under torch.compile and CUDA graphs", step_modes),
    ("views", "SimCLR views per second", step_views),
]
STEP_NAMES = [s[0] for s in STEPS]
#: run unless --steps names others (views: an earlier issue's figure, kept runnable)
DEFAULT_STEPS = [n for n in STEP_NAMES if n != "views"]
