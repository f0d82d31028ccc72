"""The objectives' own cost: forward + backward of the loss on 2 x B embeddings, against lightly's NT-Xent.

Every contender gets the same two (B, D) embeddings (requires_grad) and
computes a scalar loss and its gradient:

- peer: lightly's ``NTXentLoss(temperature)`` (what a SimCLR user would
  otherwise reach for);
- ours: ``in_batch_pairs(..., masked=True)`` (what the SimCLR method trains
  on: the negatives stay in the score matrix) and each objective on those
  rows: infonce, ml_cpc (alpha 0.1), ring (outer 0.1, inner 0.1), hard_negative
  (beta 1, tau_plus 0.1), debiased (tau_plus 0.1);
- reference: infonce on the copied-out (N, K) negatives (``masked=False``),
  the layout before masking.

N = 2B rows. Time: the median of --repeats passes, contenders interleaved in
each round (the CPU may be shared). Peak memory: what the pass adds above its
inputs, on CPU the process's peak resident set (each contender measured once in
a fresh process, the peak reset through /proc/self/clear_refs), on CUDA
``torch.cuda.max_memory_allocated``.

Targets (checked and printed): infonce at most 1x lightly's time and memory;
every other objective within 1.3x of infonce's time and memory.

CPU settings as in benchmarks/views.py (OMP_WAIT_POLICY=PASSIVE,
THP_MEM_ALLOC_ENABLE=1 unless already set; --no-env-tuning turns this off).
Prints one JSON line (progress on stderr). lightly is needed for this script
only: ``pip install --no-deps lightly``; it is not an infoview dependency.
``--no-peer`` leaves lightly out (the GPU machine has none): ours only, no
value check against NT-Xent, and only the checks against infonce.

    python benchmarks/objectives.py                  # CPU, N = 4096 and 16384
    python benchmarks/objectives.py --device cuda
    python benchmarks/objectives.py --device cuda --no-peer   # without lightly
    python benchmarks/objectives.py --lse-path softmax        # one row log-sum-exp path for all

``--lse-path`` forces one of ``infoview.objectives.lse``'s paths (chunked,
softmax, plain) where the objectives would pick by device and size (auto):
what shows which path wins on a device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TUNED_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}
if __name__ == "__main__" and "--no-env-tuning" not in sys.argv:
    for _k, _v in TUNED_ENV.items():  # must happen before torch is imported
        os.environ.setdefault(_k, _v)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OURS = {
    "infonce": {},
    "ml_cpc": {"alpha": 0.1},
    "ring": {"outer": 0.1, "inner": 0.1},
    "hard_negative": {"beta": 1.0, "tau_plus": 0.1},
    "debiased": {"tau_plus": 0.1},
}
CONTENDERS = ["lightly_ntxent", *OURS, "infonce_copied"]
TIME_TARGET_VS_LIGHTLY = 1.0
OTHERS_VS_INFONCE = 1.3


def force_lse_path(path: str) -> None:
    """Make every row log-sum-exp take ``path`` (``auto``: the objectives' own choice)."""
    if path != "auto":
        from infoview.objectives import lse

        lse.choose_path = lambda x, scales: path


def make_loss(name: str, temperature: float):
    """A function (z0, z1) -> scalar loss for one contender."""
    if name == "lightly_ntxent":
        from lightly.loss import NTXentLoss

        peer = NTXentLoss(temperature=temperature)
        return lambda z0, z1: peer(z0, z1)
    from infoview.objectives import build, in_batch_pairs, objective_params

    if name == "infonce_copied":
        obj = build("infonce")
        return lambda z0, z1: obj(*in_batch_pairs([z0, z1], temperature)).loss
    kw = dict(OURS[name])
    if "temperature" in objective_params(name):
        kw["temperature"] = temperature  # HCL/DCL's floor K exp(-1/t) uses the scores' temperature
    obj = build(name, **kw)
    return lambda z0, z1: obj(*in_batch_pairs([z0, z1], temperature, masked=True)).loss


def inputs(b: int, d: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(b, d, generator=g).to(device).requires_grad_(True)
    z1 = torch.randn(b, d, generator=g).to(device).requires_grad_(True)
    return z0, z1


def one_pass(fn, z0, z1, device: str) -> float:
    z0.grad = z1.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = fn(z0, z1)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory_child(name: str, b: int, d: int, temperature: float) -> None:
    """Run in a fresh process: print the MiB one CPU pass adds above its inputs (peak RSS)."""
    fn = make_loss(name, temperature)
    z0, z1 = inputs(b, d, "cpu")
    one_pass(fn, z0, z1, "cpu")  # warm: lazy initialisation and first-touch allocations
    z0.grad = z1.grad = None
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    one_pass(fn, z0, z1, "cpu")
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def peak_memory(name: str, b: int, d: int, temperature: float, device: str, lse_path: str = "auto") -> float:
    if device == "cuda":
        fn = make_loss(name, temperature)
        z0, z1 = inputs(b, d, device)
        one_pass(fn, z0, z1, device)
        z0.grad = z1.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        one_pass(fn, z0, z1, device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(b), str(d), str(temperature), "--lse-path", lse_path],
        capture_output=True, text=True, env=dict(os.environ),
    )
    if out.returncode != 0:
        sys.exit(f"error: the memory measurement of {name} at B = {b} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def check_values(b: int, d: int, temperature: float, device: str) -> dict[str, float]:
    """Our infonce on masked rows is lightly's NT-Xent shifted by log m: same loss, else the timings mean nothing."""
    import math

    z0, z1 = inputs(min(b, 512), d, device, seed=1)
    with torch.no_grad():
        ours = make_loss("infonce", temperature)(z0, z1).item()
        peer = make_loss("lightly_ntxent", temperature)(z0, z1).item()
    log_m = math.log(2 * z0.shape[0] - 1)
    if abs((ours + log_m) - peer) > 1e-4 * max(1.0, abs(peer)):
        sys.exit(f"error: infonce + log m = {ours + log_m:.6f} differs from lightly's NT-Xent {peer:.6f}")
    return {"infonce_plus_log_m": ours + log_m, "lightly_ntxent": peer}


def _ratio(a: float, b: float) -> float | None:
    """a / b; None where b is too small to divide by (a peak below the RSS's resolution at tiny N)."""
    return a / b if b > 0.05 else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", type=int, nargs="+", default=[4096, 16384], help="N = 2B rows")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=None,
                    help="default: all (without lightly_ntxent under --no-peer)")
    ap.add_argument("--no-peer", action="store_true",
                    help="without lightly: ours only, no NT-Xent value check (lightly: null in the output)")
    ap.add_argument("--lse-path", default="auto", choices=["auto", "chunked", "softmax", "plain"],
                    help="the row log-sum-exp path of every objective (default auto: by device and size)")
    ap.add_argument("--no-env-tuning", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def check_args(args: argparse.Namespace):
    """Fill in --contenders and check the request (exit on bad input); lightly, imported, or None under --no-peer."""
    if args.contenders is None:
        args.contenders = [c for c in CONTENDERS if not (args.no_peer and c == "lightly_ntxent")]
    if args.no_peer and "lightly_ntxent" in args.contenders:
        sys.exit("error: --no-peer leaves lightly out, but --contenders names lightly_ntxent")
    lightly = None
    if not args.no_peer:
        try:
            import lightly
        except ImportError:
            sys.exit("error: this benchmark compares against lightly's NTXentLoss: pip install --no-deps lightly "
                     "(or pass --no-peer to time ours alone)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device")
    if any(n % 2 or n < 4 for n in args.rows):
        sys.exit(f"error: --rows must be even numbers >= 4 (N = 2B), got {args.rows}")
    return lightly


def measure(n: int, args: argparse.Namespace) -> dict:
    """Time (median ms) and peak memory (MiB) of every contender at N = ``n`` rows."""
    b = n // 2
    print(f"N = {n}: timing {len(args.contenders)} contenders x {args.repeats}", file=sys.stderr, flush=True)
    fns = {c: make_loss(c, args.temperature) for c in args.contenders}
    z0, z1 = inputs(b, args.dim, args.device)
    times: dict[str, list[float]] = {c: [] for c in args.contenders}
    for c in args.contenders:
        one_pass(fns[c], z0, z1, args.device)  # warm-up
    for _ in range(args.repeats):
        for c in args.contenders:
            times[c].append(one_pass(fns[c], z0, z1, args.device))
    del fns, z0, z1
    row = {}
    for c in args.contenders:
        print(f"N = {n}: peak memory of {c}", file=sys.stderr, flush=True)
        row[c] = {"ms": 1000 * statistics.median(times[c]),
                  "peak_mib": peak_memory(c, b, args.dim, args.temperature, args.device, args.lse_path)}
    return row


def target_checks(results: dict) -> dict:
    """Each target's time and memory ratios (rounded) and whether both are met."""
    checks = {}
    for n, row in results.items():
        inf = row.get("infonce")
        if inf and "lightly_ntxent" in row:
            peer = row["lightly_ntxent"]
            checks[f"{n}/infonce_vs_lightly"] = {
                "time": _ratio(inf["ms"], peer["ms"]), "memory": _ratio(inf["peak_mib"], peer["peak_mib"]),
                "target": TIME_TARGET_VS_LIGHTLY,
            }
        for c in OURS:
            if c != "infonce" and c in row and inf:
                checks[f"{n}/{c}_vs_infonce"] = {
                    "time": _ratio(row[c]["ms"], inf["ms"]), "memory": _ratio(row[c]["peak_mib"], inf["peak_mib"]),
                    "target": OTHERS_VS_INFONCE,
                }
    for check in checks.values():
        ratios = (check["time"], check["memory"])
        check["met"] = None not in ratios and all(r <= check["target"] for r in ratios)
        check["time"], check["memory"] = (None if r is None else round(r, 3) for r in ratios)
    return checks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    force_lse_path(args.lse_path)
    if args.child:
        name, b, d, t = args.child
        peak_memory_child(name, int(b), int(d), float(t))
        return
    lightly = check_args(args)

    results = {}
    values = None if args.no_peer else check_values(args.rows[0] // 2, args.dim, args.temperature, args.device)
    for n in args.rows:
        results[str(n)] = measure(n, args)
    checks = target_checks(results)
    for row in results.values():
        for r in row.values():
            r["ms"], r["peak_mib"] = round(r["ms"], 1), round(r["peak_mib"], 1)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({
        "benchmark": "objectives", "device": args.device, "device_name": device, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "lightly": lightly.__version__ if lightly else None, "dim": args.dim,
        "lse_path": args.lse_path, "temperature": args.temperature, "repeats": args.repeats,
        "env": {k: os.environ.get(k) for k in TUNED_ENV}, "values": values, "results": results,
        "checks": checks, "all_met": all(c["met"] for c in checks.values()),
    }))


if __name__ == "__main__":
    main()
