"""How benchmarks/gpu_check.py runs a step's commands: each in its own process group, within its share of the budget."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from _gpu_check_common import ROOT, log, tail

# per-step time limits (s) and the least a step is started with; the budget caps them
LIMITS = {
    "real": {"pytest_gpu": 120, "train_step_r18_32": 60, "train_step_r50_224": 80, "objectives": 45,
             "simclr_vs_lightly": 90, "cifar10_simclr_200": 590, "compile_modes": 150, "views": 50},
    # the dry run's are three times what each step takes on an idle 2-core CPU, so that it also passes on a
    # machine kept busy by other work (a load of 6 doubles them)
    "dry": {"pytest_gpu": 90, "train_step_r18_32": 45, "train_step_r50_224": 45, "objectives": 60,
            "simclr_vs_lightly": 90, "cifar10_simclr_200": 60, "compile_modes": 75, "views": 30},
}
MIN_STEP_S = {"real": 20, "dry": 8}
DRY_NOTE = "dry run: not a measurement"  # added to the note of every target a dry run checks


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
                 deadline: float, cifar: Path):
        self.args, self.dry, self.data, self.manifest, self.work = args, dry, data, manifest, work
        self.cifar = cifar  # CIFAR-10 as an ImageFolder (train/, test/), unpacked from the carried pack
        self.results: dict = {}  # figures a later step uses (the speeds the 200-epoch run plans with)
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
            t["note"] = (note + "; " if note else "") + DRY_NOTE
        self.rec["targets"].append(t)

    def done(self) -> dict:
        if self.rec["status"] == "running":
            self.rec["status"] = "passed"
        self.rec["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.rec["log_tail"] = self.rec["log_tail"].strip()
        return self.rec

