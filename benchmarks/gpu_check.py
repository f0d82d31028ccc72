"""One command that checks infoview on a CUDA GPU and writes one JSON file and one markdown summary.

Steps (each a subprocess with its own time limit; every step runs even when
an earlier one failed, and a step that runs out of time is recorded as
``timeout``, a failure, not a crash of this script):

1. ``pytest_gpu``: ``pytest -m gpu tests`` (tests/gpu/test_cuda_paths.py and
   every other ``gpu`` test): passed / failed / skipped counts and the failures.
2. ``train_step_r18_32`` and 3. ``train_step_r50_224``: ``benchmarks/train_step.py
   --case ...`` on cuda: pipeline and model-only images/s, and their ratio
   (target >= 0.95). The CIFAR-10 images come from the carried train .beton,
   the photos of the r50 case from the carried COCO128 JPEGs (../shared is not
   on the GPU machine).
4. ``views``: ``benchmarks/views.py --device cuda``: our views per second,
   against lightly's CPU pipeline with all cores when lightly is installed
   (target >= 20x); without lightly, ours only, and the target is recorded
   as not checked (peer missing).
5. ``objectives``: ``benchmarks/objectives.py --device cuda`` (its own targets:
   infonce at most 1x lightly's NT-Xent, the others within 1.3x of infonce;
   without lightly the ones against infonce only).
6. ``cifar10_simclr``: ``infoview pretrain --config benchmarks/objectives_cifar10.yaml``
   for --cifar-steps steps on the train .beton (train.device=cuda,
   data.backend=pytorch), then ``infoview knn`` on the test .beton, and the
   same for the encoder at its initial weights (the floor): kNN top-1, and
   images/s from the run's metrics.csv (target: top-1 above the floor).

The whole run stays inside --budget-s (default 450 s; with the wheels'
install, under 8 minutes on one H100/H200): each step gets the smaller of its
own limit and what the budget has left after a minimum for the steps after it.

Data: ``--make-data DIR`` (here, where ../shared/data is) builds DIR with a
CIFAR-10 train .beton (1000 images a class) and test .beton (200 a class),
written by ``infoview prepare folder:<subset> ... write_mode=jpg
jpeg_quality=90`` from a per-class subset of symlinks, 410 CIFAR-10 training
JPEGs a class for the views benchmark, 24 COCO128 photos, and DIR/data.json
(what is there and its size). The default DIR, runs/gpu_data, is ignored by
git, so the device tool can carry it.

``--dry-run`` checks this script and every step on a CPU in about a minute:
tiny betons in a temp dir (8 train and 4 test images a class), device cpu,
a few steps of tiny models, the gpu tests switched to the CPU
(INFOVIEW_GPU_TESTS_ON_CPU=1). Its figures say nothing about speed.

Writes OUT/gpu_check.json and OUT/gpu_check.md (rewritten after each step, so
a run cut short still leaves them); OUT is --out, else $OUT, else
runs/gpu_check. Everything else goes to a temp dir that is removed.

    python benchmarks/gpu_check.py --make-data runs/gpu_data      # here, once (29 MiB)
    ../shared/device/wheels.sh                                    # here, once: .whl/ (8 MiB)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check # here, on the CPU (about a minute)

On the GPU machine (the device tool's run), about 5 to 8 minutes:
command ``bash benchmarks/gpu_check.sh`` (the report goes to $OUT), carry
``[".whl", "runs/gpu_data"]``, timeout_s 540. gpu_check.sh installs the
wheels into /tmp/site and puts them and the checkout on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CIFAR10 = SHARED_DATA / "cifar10"
DEFAULT_PHOTOS = SHARED_DATA / "coco128" / "images" / "train2017"
DEFAULT_DATA = ROOT / "runs" / "gpu_data"
CIFAR_CONFIG = ROOT / "benchmarks" / "objectives_cifar10.yaml"
JSON_NAME, MD_NAME, MANIFEST = "gpu_check.json", "gpu_check.md", "data.json"
GPU_TESTS_ON_CPU = "INFOVIEW_GPU_TESTS_ON_CPU"

FULL_DATA = {"train_per_class": 1000, "test_per_class": 200, "views_per_class": 410, "photos": 24}
DRY_DATA = {"train_per_class": 8, "test_per_class": 4, "views_per_class": 4, "photos": 4}

RATIO_TARGET = 0.95  # train_step: pipeline img/s over model-only img/s
VIEWS_TARGET = 20.0  # views: ours over lightly's CPU pipeline with all cores

# per-step time limits (s) and the least a step is started with; the budget caps them
LIMITS = {
    "real": {"pytest_gpu": 170, "train_step_r18_32": 70, "train_step_r50_224": 100, "views": 50,
             "objectives": 50, "cifar10_simclr": 150},
    "dry": {"pytest_gpu": 60, "train_step_r18_32": 30, "train_step_r50_224": 30, "views": 20,
            "objectives": 25, "cifar10_simclr": 45},
}
MIN_STEP_S = {"real": 20, "dry": 8}
DEFAULT_BUDGET_S = {"real": 450, "dry": 110}
TINY_MODEL = ["model.kwargs.channels=[8,16,32,64]", "model.kwargs.layers=[1,1,1,1]"]


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def tail(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


# --------------------------------------------------------------------------- data


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _prepare(subset: Path, out: Path, split: str) -> dict:
    """``infoview prepare folder:<subset> <out> split=<split> write_mode=jpg jpeg_quality=90``, in this process."""
    from infoview.cli import main as infoview_main

    args = ["prepare", f"folder:{subset}", str(out), f"split={split}", "write_mode=jpg", "jpeg_quality=90"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = infoview_main(args)
    if rc != 0:
        raise UsageError(f"`infoview {' '.join(args)}` failed (exit {rc}); its message is above")
    text = buf.getvalue()
    try:
        summary = json.loads(text[text.index("{"):])
    except ValueError:
        summary = {}
    return {"command": "infoview " + " ".join(shlex.quote(a) for a in args), "images": summary.get("images"),
            "seconds": summary.get("seconds"), "bytes": out.stat().st_size}


def make_data(out: Path, cifar10: Path, photos: Path | None, sizes: dict, overwrite: bool = False,
              quiet: bool = False) -> dict:
    """Build the GPU check's data in ``out``; returns its manifest (also written to out/data.json)."""
    for split in ("train", "test"):
        if not (cifar10 / split).is_dir():
            raise UsageError(f"--cifar10 {cifar10} has no {split}/ folder (expected ImageFolder JPEGs: "
                             f"{split}/<class>/*.jpg; CIFAR-10 as JPEGs is in ../shared/data/cifar10)")
    for key, value in sizes.items():
        if value < (0 if key == "photos" else 1):
            raise UsageError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'photos' else '>= 1'}, got {value}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} already exists and is not empty; pass --overwrite to replace it, or choose "
                             "another folder")
        if not (out / MANIFEST).is_file():
            raise UsageError(f"{out} is not empty and holds no {MANIFEST}: not a folder made by --make-data, so it "
                             "is left alone; choose another folder")
        shutil.rmtree(out)
    if not quiet:
        log(f"making data in {out}")
    files = {split: _class_files(cifar10 / split) for split in ("train", "test")}
    if not files["train"] or files["train"].keys() != files["test"].keys():
        raise UsageError(f"{cifar10}: train/ and test/ must hold the same class folders")
    need = {"train": max(sizes["train_per_class"], sizes["views_per_class"]), "test": sizes["test_per_class"]}
    for split, per_class in files.items():
        short = {c: len(f) for c, f in per_class.items() if len(f) < need[split]}
        if short:
            raise UsageError(f"{cifar10}/{split}: classes with fewer than {need[split]} images: {short}")

    t0 = time.perf_counter()
    tmp_out = out.with_name(f".{out.name}.tmp")
    if tmp_out.exists():
        shutil.rmtree(tmp_out)
    tmp_out.mkdir(parents=True)
    manifest: dict = {"made": now_iso(), "cifar10": str(cifar10), "sizes": dict(sizes), "classes": sorted(files["train"])}
    with tempfile.TemporaryDirectory(prefix="infoview-gpu-check-subset-") as tmp:
        subset = Path(tmp) / "cifar10_subset"
        for split, per_class_n in (("train", sizes["train_per_class"]), ("test", sizes["test_per_class"])):
            for cls, paths in files[split].items():
                d = subset / split / cls
                d.mkdir(parents=True)
                for p in paths[:per_class_n]:
                    (d / p.name).symlink_to(p.resolve())
        for split in ("train", "test"):
            manifest[f"{split}_beton"] = _prepare(subset, tmp_out / f"{split}.beton", split)
    # real JPEG files (symlinks would not travel to the GPU machine) for benchmarks/views.py --data
    for cls, paths in files["train"].items():
        d = tmp_out / "views" / cls
        d.mkdir(parents=True)
        for p in paths[: sizes["views_per_class"]]:
            shutil.copyfile(p, d / p.name)
    manifest["views"] = {"images": sizes["views_per_class"] * len(files["train"]), "bytes": _size(tmp_out / "views")}
    # photos for the r50-224 case: folder:<photos> holds one class folder
    manifest["photos"] = None
    if sizes["photos"] and photos is not None and photos.is_dir():
        chosen = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: sizes["photos"]]
        if chosen:
            d = tmp_out / "photos" / "coco128"
            d.mkdir(parents=True)
            for p in chosen:
                shutil.copyfile(p, d / p.name)
            manifest["photos"] = {"source": str(photos), "images": len(chosen), "bytes": _size(tmp_out / "photos")}
    if manifest["photos"] is None:
        manifest["photos_note"] = (f"no photos ({photos} missing or --photos 0): the r50-224 case reads the CIFAR-10 "
                                   "views folder at 256 px instead")
    for split in ("train", "test"):  # the commands as they name the final folder
        manifest[f"{split}_beton"]["command"] = manifest[f"{split}_beton"]["command"].replace(str(tmp_out), str(out))
    manifest["total_bytes"] = _size(tmp_out)
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp_out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_out.rename(out)
    return manifest


def read_data(data: Path) -> dict:
    """The manifest of a --make-data folder, after checking that everything the steps read is there."""
    hint = f"make it here with: python benchmarks/gpu_check.py --make-data {data}"
    if not (data / MANIFEST).is_file():
        raise UsageError(f"--data {data} holds no {MANIFEST} (not made by --make-data, or not carried); {hint}")
    manifest = json.loads((data / MANIFEST).read_text())
    needed = ["train.beton", "test.beton", "views"] + (["photos"] if manifest.get("photos") else [])
    missing = [n for n in needed if not (data / n).exists()]
    if missing:
        raise UsageError(f"--data {data} lacks {', '.join(missing)}; {hint}")
    return manifest


# --------------------------------------------------------------------------- running commands


def run_command(cmd: list[str], timeout: float, env: dict, log_dir: Path, tag: str) -> dict:
    """Run ``cmd`` in its own process group; on time-out the whole group is ended."""
    out_path, err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    log(f"$ {shown}  (limit {timeout:.0f} s)")
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    seconds = time.perf_counter() - t0
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    return {"command": shown, "returncode": rc, "timed_out": timed_out, "seconds": round(seconds, 1),
            "stdout": stdout, "stderr": stderr}


def last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def failure_of(res: dict, what: str) -> str | None:
    """One line saying why a command failed, or None."""
    if res["timed_out"]:
        return f"{what} ran past its {res['limit_s']:.0f} s limit and was stopped"
    if res["returncode"] != 0:
        lines = [ln for ln in res["stderr"].strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "(no message)"
        return f"{what} exited with status {res['returncode']}: {last[:300]}"
    return None


class Context:
    def __init__(self, args, dry: bool, data: Path, manifest: dict, work: Path, env: dict, peer: dict,
                 deadline: float):
        self.args, self.dry, self.data, self.manifest, self.work = args, dry, data, manifest, work
        self.env, self.peer, self.deadline = env, peer, deadline
        self.mode = "dry" if dry else "real"
        self.device = "cpu" if dry else "cuda"
        self.py = sys.executable
        self.workers = 0 if dry else min(os.cpu_count() or 1, 8)

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Step:
    """One step's record, filled while it runs."""

    def __init__(self, name: str, title: str, ctx: Context, later_steps: int):
        self.ctx = ctx
        self.limit = LIMITS[ctx.mode][name]
        reserve = later_steps * MIN_STEP_S[ctx.mode]
        self.deadline = time.monotonic() + max(0.0, min(self.limit, ctx.left() - reserve))
        self.rec: dict = {"name": name, "title": title, "status": "running", "seconds": None,
                          "limit_s": round(self.deadline - time.monotonic()), "commands": [], "figures": {},
                          "targets": [], "notes": [], "error": None, "log_tail": ""}
        self.t0 = time.perf_counter()

    def run(self, cmd: list[str], what: str, env_extra: dict | None = None, reserve_after: float = 0.0) -> dict:
        left = self.deadline - time.monotonic() - reserve_after
        if left < MIN_STEP_S[self.ctx.mode] / 2:
            res = {"command": " ".join(shlex.quote(str(c)) for c in cmd), "returncode": None, "timed_out": True,
                   "seconds": 0.0, "stdout": "", "stderr": "", "limit_s": max(left, 0.0), "not_started": True}
            self.rec["commands"].append({k: res[k] for k in ("command", "returncode", "seconds")} | {"timed_out": True})
            self.fail(f"{what} was not started: the time budget (--budget-s) was spent")
            return res
        env = dict(self.ctx.env, **(env_extra or {}))
        res = run_command(cmd, left, env, self.ctx.work, f"{self.rec['name']}_{len(self.rec['commands'])}")
        res["limit_s"] = left
        self.rec["commands"].append({"command": res["command"], "returncode": res["returncode"],
                                     "timed_out": res["timed_out"], "seconds": res["seconds"]})
        err = failure_of(res, what)
        if err:
            self.fail(err, timed_out=res["timed_out"])
            self.rec["log_tail"] += tail(res["stderr"] + "\n" + res["stdout"], 3000) + "\n"
        return res

    def fail(self, msg: str, timed_out: bool = False) -> None:
        if self.rec["status"] not in ("failed", "timeout"):
            self.rec["status"] = "timeout" if timed_out else "failed"
            self.rec["error"] = msg
        else:
            self.rec["notes"].append(msg)

    def target(self, name: str, value, target: str, met: bool | None, note: str = "") -> None:
        t = {"name": name, "value": value, "target": target, "met": met}
        if note:
            t["note"] = note
        if self.ctx.dry and met is not None:
            t["note"] = (note + "; " if note else "") + "dry run: not a measurement"
        self.rec["targets"].append(t)

    def done(self) -> dict:
        if self.rec["status"] == "running":
            self.rec["status"] = "passed"
        self.rec["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.rec["log_tail"] = self.rec["log_tail"].strip()
        return self.rec


# --------------------------------------------------------------------------- the steps


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


# --------------------------------------------------------------------------- device, report


PEER_IMPORTS = {"views": ("lightly.transforms", "SimCLRTransform"), "objectives": ("lightly.loss", "NTXentLoss")}


def probe_device(env: dict, py: str, peer: bool) -> dict:
    """The device, and (``peer``) whether lightly's pieces that views.py and objectives.py use import here."""
    code = (
        "import importlib, json, os, platform, torch\n"
        "d = {'torch': torch.__version__, 'cuda_available': torch.cuda.is_available(), 'python': platform.python_version(),"
        " 'cpu_cores': os.cpu_count()}\n"
        "if d['cuda_available']:\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    d.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda, capability='%d.%d' % (p.major, p.minor),"
        " memory_gib=round(p.total_memory / 2**30, 1), device_count=torch.cuda.device_count())\n"
        "else:\n"
        "    d['name'] = 'cpu'\n"
        f"peers = {PEER_IMPORTS if peer else {}!r}\n"
        "d['peer'] = {}\n"
        "for bench, (mod, attr) in peers.items():\n"
        "    try:\n"
        "        getattr(importlib.import_module(mod), attr)\n"
        "        d['peer'][bench] = 'lightly ' + importlib.import_module('lightly').__version__\n"
        "    except Exception as exc:\n"
        "        d['peer'][bench] = None\n"
        "        d['peer'][bench + '_error'] = f'{mod}.{attr}: {type(exc).__name__}: {exc}'[:200]\n"
        "print(json.dumps(d))\n"
    )
    res = subprocess.run([py, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        raise UsageError(f"python could not import torch: {lines[-1] if lines else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git here)"


def summarise(steps: list[dict]) -> dict:
    targets = [t for s in steps for t in s["targets"]]
    return {
        "steps": len(steps),
        "passed": sum(s["status"] == "passed" for s in steps),
        "failed": sum(s["status"] != "passed" for s in steps),
        "all_passed": bool(steps) and all(s["status"] == "passed" for s in steps),
        "targets_met": sum(t["met"] is True for t in targets),
        "targets_unmet": sum(t["met"] is False for t in targets),
        "targets_not_checked": sum(t["met"] is None for t in targets),
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    return "-" if v is None else str(v)


FIGURE_KEYS = {
    "pytest_gpu": ["passed", "failed", "errors", "skipped"],
    "train_step_r18_32": ["pipeline_img_per_s", "model_only_img_per_s", "ratio", "global_batch", "precision"],
    "train_step_r50_224": ["pipeline_img_per_s", "model_only_img_per_s", "ratio", "global_batch", "precision"],
    "cifar10_simclr": ["steps", "global_batch", "knn_top1", "knn_top1_random_init", "images_per_s_median",
                       "pretrain_wall_s"],
}


def figures_line(step: dict) -> str:
    f = step["figures"]
    if step["name"] == "views":
        return "; ".join(f"{s} px: ours {_fmt(r.get('ours_views_per_s'))} views/s"
                         + (f", lightly {_fmt(r.get('peer_views_per_s'))}" if r.get("peer_views_per_s") else "")
                         for s, r in (f.get("results") or {}).items())
    if step["name"] == "objectives":
        parts = []
        for n, row in (f.get("results") or {}).items():
            parts.append(f"N={n}: " + ", ".join(f"{c} {_fmt(v.get('ms'))} ms" for c, v in row.items()))
        return "; ".join(parts)
    return ", ".join(f"{k} {_fmt(f[k])}" for k in FIGURE_KEYS.get(step["name"], []) if k in f)


def markdown(report: dict) -> str:
    d, summary = report["device"], report["summary"]
    lines = [
        "# infoview GPU check" + (" (dry run on CPU)" if report["dry_run"] else ""),
        "",
        f"- device: {d.get('name')}" + (f" ({d.get('memory_gib')} GiB, CUDA {d.get('cuda')}, sm {d.get('capability')})"
                                         if d.get("cuda_available") else "")
        + f", {d.get('cpu_cores')} CPU cores; torch {d.get('torch')}, Python {d.get('python')}",
        f"- commit: {report['commit']}; started {report['started']}; {report['seconds']} s of a "
        f"{report['budget_s']} s budget" + ("" if report["finished"] else " (unfinished: still running or cut short)"),
        f"- command: `{report['command']}`",
        f"- data: {report['data_note']}",
        f"- peer (lightly): {report['peer']['note']}",
        "",
        f"**{summary['passed']} of {len(report['planned_steps'])} steps passed**; targets: {summary['targets_met']} "
        f"met, {summary['targets_unmet']} unmet, {summary['targets_not_checked']} not checked.",
        "",
        "| step | status | time (s) | figures | targets |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for s in report["steps"]:
        targets = "; ".join(
            f"{t['name']}: {_fmt(t['value'])} (target {t['target']}): "
            + {True: "met", False: "**unmet**", None: "not checked"}[t["met"]]
            for t in s["targets"]) or "-"
        lines.append(f"| {s['name']} | {s['status'] if s['status'] == 'passed' else '**' + s['status'] + '**'} | "
                     f"{_fmt(s['seconds'])} | {figures_line(s) or '-'} | {targets} |")
    dry_note = "dry run: not a measurement"

    def target_note(t: dict) -> str:  # the dry run's own remark is said once, at the end
        return (t.get("note") or "").replace("; " + dry_note, "").replace(dry_note, "")

    details = [s for s in report["steps"] if s["error"] or s["notes"] or any(target_note(t) for t in s["targets"])]
    if details:
        lines += ["", "## Notes and failures", ""]
        for s in details:
            if s["error"]:
                lines.append(f"- **{s['name']}**: {s['error']}")
            for n in s["notes"]:
                lines.append(f"- {s['name']}: {n}")
            for t in s["targets"]:
                if target_note(t):
                    lines.append(f"- {s['name']}, {t['name']}: {target_note(t)}")
        failed = [s for s in report["steps"] if s["status"] != "passed" and s["log_tail"]]
        for s in failed:
            lines += ["", f"### {s['name']}: end of its output", "", "```", tail(s["log_tail"], 1500), "```"]
    if report["dry_run"]:
        lines += ["", "A dry run checks the script and every step on a CPU with tiny models and data: its figures "
                      "say nothing about speed or accuracy, and its targets are not measurements."]
    lines += ["", f"Full record: {JSON_NAME} (every command, its exit status and time, all figures)."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    report["summary"] = summarise(report["steps"])
    for name, text in ((JSON_NAME, json.dumps(report, indent=2) + "\n"), (MD_NAME, markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for gpu_check.json and gpu_check.md (default $OUT, else runs/gpu_check)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the folder --make-data made (default runs/gpu_data)")
    ap.add_argument("--dry-run", action="store_true", help="every step in seconds on the CPU, on tiny data")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds for all steps together (default {DEFAULT_BUDGET_S['real']}, "
                         f"dry run {DEFAULT_BUDGET_S['dry']})")
    ap.add_argument("--steps", nargs="+", choices=STEP_NAMES, default=None, metavar="STEP",
                    help="run only these steps: " + ", ".join(STEP_NAMES))
    ap.add_argument("--cifar-steps", type=int, default=300, help="pretraining steps of the CIFAR-10 run (default 300)")
    ap.add_argument("--no-peer", action="store_true", help="leave lightly out even where it is installed")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier gpu_check.json/.md in --out, or an earlier --make-data folder")
    g = ap.add_argument_group("data (--make-data)")
    g.add_argument("--make-data", type=Path, default=None, metavar="DIR", help="build the data folder and exit")
    g.add_argument("--cifar10", type=Path, default=DEFAULT_CIFAR10,
                   help="CIFAR-10 JPEGs, train/<class>/ and test/<class>/ (default ../shared/data/cifar10)")
    g.add_argument("--photos-dir", type=Path, default=DEFAULT_PHOTOS,
                   help="a folder of photos for the r50-224 case (default ../shared/data/coco128/images/train2017)")
    for key, value in FULL_DATA.items():
        g.add_argument(f"--{key.replace('_', '-')}", type=int, default=value, dest=f"n_{key}", metavar="N",
                       help=f"default {value}")
    args = ap.parse_args(argv)
    args.argv_shown = [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    if args.budget_s is not None and args.budget_s <= 0:
        raise UsageError(f"--budget-s must be > 0, got {args.budget_s}")
    if args.cifar_steps < 1:
        raise UsageError(f"--cifar-steps must be >= 1, got {args.cifar_steps}")
    if args.make_data is not None and args.dry_run:
        raise UsageError("--make-data builds the data and exits; run --dry-run separately (it makes its own)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.make_data is not None:
            sizes = {k: getattr(args, f"n_{k}") for k in FULL_DATA}
            manifest = make_data(args.make_data.resolve(), args.cifar10.resolve(), args.photos_dir, sizes, args.overwrite)
            print(json.dumps(manifest, indent=2))
            log(f"wrote {args.make_data}: {manifest['total_bytes'] / 2**20:.1f} MiB; carry it with the device run")
            return 0
        return check(args)
    except UsageError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


def check(args) -> int:
    dry = args.dry_run
    mode = "dry" if dry else "real"
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs" / "gpu_check")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, expected a folder")
    if not args.overwrite and any((out / n).exists() for n in (JSON_NAME, MD_NAME)):
        raise UsageError(f"{out} already holds {JSON_NAME} or {MD_NAME} from an earlier run; pass --overwrite or "
                         "choose another --out")
    if not dry:
        manifest = read_data(args.data.resolve())
    budget = args.budget_s or DEFAULT_BUDGET_S[mode]

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (benchmarks/views.py says why)
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU's, also on a machine with a GPU
    device = probe_device(env, sys.executable, peer=not args.no_peer)
    peers = device.pop("peer")
    if not dry and not device.get("cuda_available"):
        raise UsageError("torch sees no CUDA device here; run on the GPU machine, or pass --dry-run for the CPU check")
    out.mkdir(parents=True, exist_ok=True)

    notes = []
    for bench in PEER_IMPORTS:
        if peers.get(bench):
            notes.append(f"{bench}: {peers[bench]}")
        else:
            why = "--no-peer" if args.no_peer else peers.get(f"{bench}_error", "not importable")
            notes.append(f"{bench}: missing ({why}), ours only")
    peer = {**peers, "note": "; ".join(notes)}

    started, t_start = now_iso(), time.monotonic()
    report = {
        "check": "infoview gpu_check", "format": 1, "dry_run": dry, "finished": False, "started": started,
        "seconds": 0.0, "budget_s": budget, "command": " ".join(["benchmarks/gpu_check.py", *args.argv_shown]),
        "commit": git_commit(), "device": device, "peer": peer, "env": {k: env.get(k) for k in ("OMP_WAIT_POLICY",)},
        "data": None, "data_note": "", "planned_steps": [], "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="infoview-gpu-check-") as tmp:
        work = Path(tmp)
        if dry:
            t0 = time.perf_counter()
            data = work / "data"
            sizes = dict(DRY_DATA)
            manifest = make_data(data, args.cifar10.resolve(), args.photos_dir, sizes, quiet=True)
            report["data_note"] = (f"dry run: tiny data made in a temp dir in {time.perf_counter() - t0:.1f} s "
                                   f"({sizes['train_per_class']} train / {sizes['test_per_class']} test images a class)")
        else:
            data = args.data.resolve()
            report["data_note"] = (f"{data}: {manifest['train_beton']['images']} train / "
                                   f"{manifest['test_beton']['images']} test CIFAR-10 images (.beton, JPEG q90), "
                                   f"{manifest['views']['images']} view JPEGs, "
                                   + (f"{manifest['photos']['images']} COCO128 photos"
                                      if manifest.get("photos") else "no photos")
                                   + f"; {manifest['total_bytes'] / 2**20:.1f} MiB")
        report["data"] = manifest
        ctx = Context(args, dry, data, manifest, work, env, peers, t_start + budget)
        chosen = [s for s in STEPS if args.steps is None or s[0] in args.steps]
        report["planned_steps"] = [s[0] for s in chosen]
        write_report(out, report)
        for i, (name, title, fn) in enumerate(chosen):
            step = Step(name, title, ctx, later_steps=len(chosen) - i - 1)
            log(f"step {i + 1}/{len(chosen)}: {name} (limit {step.rec['limit_s']} s)")
            try:
                fn(ctx, step)
            except Exception as exc:  # a bug in a step's own parsing must not stop the others
                step.fail(f"gpu_check's {name} step raised {type(exc).__name__}: {exc}")
            rec = step.done()
            log(f"step {name}: {rec['status']} in {rec['seconds']} s" + (f": {rec['error']}" if rec["error"] else ""))
            report["steps"].append(rec)
            report["seconds"] = round(time.monotonic() - t_start, 1)
            write_report(out, report)
    report["finished"] = True
    report["seconds"] = round(time.monotonic() - t_start, 1)
    write_report(out, report)
    s = report["summary"]
    print(json.dumps({"gpu_check": str(out / JSON_NAME), "summary": md_path(out), **s, "seconds": report["seconds"]}))
    log(f"{s['passed']} of {len(chosen)} steps passed in {report['seconds']} s; wrote {out / JSON_NAME} and "
        f"{out / MD_NAME}")
    return 0 if s["failed"] == 0 and s["passed"] == len(chosen) else 1


def md_path(out: Path) -> str:
    return str(out / MD_NAME)


if __name__ == "__main__":
    sys.exit(main())
