"""One command that checks infoview on a CUDA GPU and writes one JSON file and one markdown summary.

Steps, in order of value (each a subprocess with its own time limit; every
step runs even when an earlier one failed, and a step that runs out of time is
recorded as ``timeout``, a failure, not a crash of this script):

1. ``pytest_gpu``: ``pytest -m gpu tests`` (tests/gpu/: the CUDA paths against
   the CPU's: bf16, channels-last, torch.compile, DDP over NCCL, the resident
   split, JPEGs decoded on the GPU, the softmax log-sum-exp, fused optimisers).
2. ``train_step_r18_32`` and 3. ``train_step_r50_224``: ``benchmarks/train_step.py
   --case ...``: pipeline and model-only images/s and their ratio (target
   >= 0.95), peak GPU memory; r18-32 is the one-GPU CIFAR-10 preset with the
   split held on the GPU, r50-224 ResNet-50 on photos decoded on the GPU.
4. ``objectives``: ``benchmarks/objectives.py --device cuda`` (infonce at most
   1x lightly's NT-Xent in time and memory, the others within 1.3x of infonce).
5. ``simclr_vs_lightly``: ``infoview pretrain --config simclr_infonce_cifar10_1gpu``
   for 300 steps, end to end, then ``benchmarks/lightly_simclr.py`` (lightly's
   transforms, DataLoader on all cores and NT-Xent, the same network, batch and
   precision): images/s of each and their ratio (target >= 3x).
6. ``cifar10_simclr_200``: the preset on all 50,000 CIFAR-10 training images
   for 200 epochs, or as many as the budget left holds at the speed step 5
   measured (``--cifar-epochs`` forces a number), then ``infoview knn`` (k = 200,
   all 50,000 against all 10,000): top-1 (target >= 85%) and minutes of
   training (target <= 8); a shorter run says so and gives the estimate for 200.
7. ``compile_modes``: r18-32 under ``train.compile`` (default mode, and
   reduce-overhead: CUDA graphs) against eager, when the budget has time left.
8. ``views`` (only when --steps names it): ``benchmarks/views.py`` against
   lightly's per-image CPU pipeline.

The whole run stays inside --budget-s (default 540 s: one device command of 9
minutes): each step gets the smaller of its own limit and what the budget has
left after a minimum for the steps after it. Steps 1-5 take about 4 minutes on
one H100/H200; step 6 takes the rest.

Data: ``--make-data DIR`` (here, where ../shared/data is) builds DIR with
CIFAR-10's JPEGs as they are (all 60,000 by default) packed into one file,
``cifar10_jpegs.npz`` (55 MB: 60,000 small files would not travel), 24
COCO128 photos, and DIR/data.json (what is there and its size). The checks
unpack the JPEGs into a temp folder (folder: source) before the first step.
The default DIR, runs/gpu_data, is ignored by git, so the device tool can carry it.

``--dry-run`` checks this script and every step on a CPU in about two minutes:
a tiny pack in a temp dir (8 train and 4 test images a class), device cpu,
a few steps of tiny models, the gpu tests switched to the CPU
(INFOVIEW_GPU_TESTS_ON_CPU=1). Its figures say nothing about speed.

Writes OUT/gpu_check.json and OUT/gpu_check.md (rewritten after each step, so
a run cut short still leaves them); OUT is --out, else $OUT, else
runs/gpu_check. Everything else goes to a temp dir that is removed.

    python benchmarks/gpu_check.py --make-data runs/gpu_data      # here, once (59 MB)
    bash benchmarks/gpu_wheels.sh                                 # here, once: .whl/ (about 2 MB)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check # here, on the CPU (about two minutes)

On the GPU machine (the device tool's run), 9 minutes:
command ``bash benchmarks/gpu_check.sh``, carry ``[".whl", "runs/gpu_data"]``,
timeout_s 600. gpu_check.sh installs the wheels into /tmp/site and puts them
and the checkout on PYTHONPATH; the report goes to $OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # its parts, benchmarks/_gpu_check_*.py, also when this file is imported
    sys.path.insert(0, str(HERE))

from _gpu_check_common import JSON_NAME, MD_NAME, ROOT, UsageError, log, now_iso  # noqa: E402
from _gpu_check_data import make_data, read_data, unpack_cifar10  # noqa: E402
from _gpu_check_report import PEER_IMPORTS, git_commit, md_path, probe_device, write_report  # noqa: E402
from _gpu_check_runner import Context, Step  # noqa: E402
from _gpu_check_steps import DEFAULT_STEPS, STEP_NAMES, STEPS  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CIFAR10 = SHARED_DATA / "cifar10"
DEFAULT_PHOTOS = SHARED_DATA / "coco128" / "images" / "train2017"
DEFAULT_DATA = ROOT / "runs" / "gpu_data"

FULL_DATA = {"train_per_class": 5000, "test_per_class": 1000, "photos": 24}
DRY_DATA = {"train_per_class": 8, "test_per_class": 4, "photos": 4}
DEFAULT_BUDGET_S = {"real": 540, "dry": 400}


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
                    help="run only these steps, in their order: " + ", ".join(STEP_NAMES)
                         + f" (default: all but {', '.join(n for n in STEP_NAMES if n not in DEFAULT_STEPS)})")
    ap.add_argument("--cifar-epochs", type=int, default=0,
                    help="epochs of the CIFAR-10 run (default 0: 200, or as many as the budget holds)")
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
    if args.cifar_epochs < 0:
        raise UsageError(f"--cifar-epochs must be >= 1 (or 0: as many as fit), got {args.cifar_epochs}")
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


def out_folder(args) -> Path:
    """--out, else $OUT, else runs/gpu_check: not a file, and without --overwrite not holding an earlier report."""
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs" / "gpu_check")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, expected a folder")
    if not args.overwrite and any((out / n).exists() for n in (JSON_NAME, MD_NAME)):
        raise UsageError(f"{out} already holds {JSON_NAME} or {MD_NAME} from an earlier run; pass --overwrite or "
                         "choose another --out")
    return out


def step_env(dry: bool) -> dict:
    """The environment of every command the steps run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (benchmarks/views.py says why)
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU's, also on a machine with a GPU
    return env


def peer_record(peers: dict, no_peer: bool) -> dict:
    """What probe_device found of lightly, and a note saying it for each benchmark that compares against it."""
    notes = []
    for bench in PEER_IMPORTS:
        if peers.get(bench):
            notes.append(f"{bench}: {peers[bench]}")
        else:
            why = "--no-peer" if no_peer else peers.get(f"{bench}_error", "not importable")
            notes.append(f"{bench}: missing ({why}), ours only")
    return {**peers, "note": "; ".join(notes)}


def dry_data(args, work: Path) -> tuple[Path, dict, str]:
    """The dry run's tiny data, made in ``work``: its folder, its manifest and a line about it."""
    t0 = time.perf_counter()
    data = work / "data"
    sizes = dict(DRY_DATA)
    manifest = make_data(data, args.cifar10.resolve(), args.photos_dir, sizes, quiet=True)
    note = (f"dry run: tiny data made in a temp dir in {time.perf_counter() - t0:.1f} s "
            f"({sizes['train_per_class']} train / {sizes['test_per_class']} test CIFAR-10 JPEGs a class)")
    return data, manifest, note


def data_note(data: Path, manifest: dict) -> str:
    """A line about the --make-data folder ``data``."""
    pack = manifest["cifar10_pack"]
    return (f"{data}: {pack['train']['images']} train / {pack['test']['images']} test CIFAR-10 JPEGs (as in "
            f"../shared/data, packed), "
            + (f"{manifest['photos']['images']} COCO128 photos" if manifest.get("photos") else "no photos")
            + f"; {manifest['total_bytes'] / 2**20:.1f} MiB")


def run_steps(chosen: list, ctx: Context, report: dict, out: Path, t_start: float) -> None:
    """Each chosen step in turn, also after one failed; the report is rewritten after each."""
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


def check(args) -> int:
    """Every chosen step, then the report; 0 when all passed."""
    dry = args.dry_run
    mode = "dry" if dry else "real"
    out = out_folder(args)
    if not dry:
        manifest = read_data(args.data.resolve())
    budget = args.budget_s or DEFAULT_BUDGET_S[mode]

    env = step_env(dry)
    device = probe_device(env, sys.executable, peer=not args.no_peer)
    peers = device.pop("peer")
    if not dry and not device.get("cuda_available"):
        raise UsageError("torch sees no CUDA device here; run on the GPU machine, or pass --dry-run for the CPU check")
    out.mkdir(parents=True, exist_ok=True)
    peer = peer_record(peers, args.no_peer)

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
            data, manifest, report["data_note"] = dry_data(args, work)
        else:
            data = args.data.resolve()
            report["data_note"] = data_note(data, manifest)
        report["data"] = manifest
        t0 = time.perf_counter()
        cifar = unpack_cifar10(data, work / "cifar10")
        report["data_note"] += f"; unpacked into a temp folder in {time.perf_counter() - t0:.1f} s"
        ctx = Context(args, dry, data, manifest, work, env, peers, t_start + budget, cifar)
        chosen = [s for s in STEPS if s[0] in (args.steps or DEFAULT_STEPS)]
        report["planned_steps"] = [s[0] for s in chosen]
        write_report(out, report)
        run_steps(chosen, ctx, report, out, t_start)
    report["finished"] = True
    report["seconds"] = round(time.monotonic() - t_start, 1)
    write_report(out, report)
    s = report["summary"]
    print(json.dumps({"gpu_check": str(out / JSON_NAME), "summary": md_path(out), **s, "seconds": report["seconds"]}))
    log(f"{s['passed']} of {len(chosen)} steps passed in {report['seconds']} s; wrote {out / JSON_NAME} and "
        f"{out / MD_NAME}")
    return 0 if s["failed"] == 0 and s["passed"] == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
