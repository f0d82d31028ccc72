"""benchmarks/gpu_check.py's report: the device it ran on, and gpu_check.json and gpu_check.md."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from _gpu_check_common import JSON_NAME, MD_NAME, ROOT, UsageError, tail
from _gpu_check_runner import DRY_NOTE

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
    "train_step_r18_32": ["pipeline_img_per_s", "model_only_img_per_s", "ratio", "peak_mem_mb_pipeline",
                          "peak_mem_mb_model_only", "global_batch", "precision", "loader_backend"],
    "train_step_r50_224": ["pipeline_img_per_s", "model_only_img_per_s", "ratio", "peak_mem_mb_pipeline",
                           "peak_mem_mb_model_only", "global_batch", "precision", "loader_backend"],
    "cifar10_simclr_200": ["epochs_asked", "epochs", "knn_top1", "pretrain_wall_s", "images_per_s_median",
                           "peak_gpu_mem_mb", "global_batch", "why"],
}


def _side(name: str, f: dict | None, speed: str) -> str:
    if not f:
        return f"{name}: -"
    return f"{name} {_fmt(f.get(speed))} img/s (peak GPU memory {_fmt(f.get('peak_gpu_mem_mb'))} MB)"


def figures_line(step: dict) -> str:
    f = step["figures"]
    if step["name"] == "views":
        return "; ".join(f"{s} px: ours {_fmt(r.get('ours_views_per_s'))} views/s"
                         + (f", lightly {_fmt(r.get('peer_views_per_s'))}" if r.get("peer_views_per_s") else "")
                         for s, r in (f.get("results") or {}).items())
    if step["name"] == "objectives":
        parts = []
        for n, row in (f.get("results") or {}).items():
            parts.append(f"N={n}: " + ", ".join(f"{c} {_fmt(v.get('ms'))} ms / {_fmt(v.get('peak_mib'))} MiB"
                                                for c, v in row.items()))
        return "; ".join(parts)
    if step["name"] == "simclr_vs_lightly":
        return _side("infoview", f.get("ours"), "images_per_s_median") + "; " + _side("lightly", f.get("lightly"),
                                                                                     "images_per_s")
    if step["name"] == "compile_modes":
        return f"eager {_fmt(f.get('eager_pipeline_img_per_s'))} img/s; " + "; ".join(
            f"{m} {_fmt((f.get(m) or {}).get('pipeline_img_per_s'))} img/s "
            f"(x{_fmt((f.get(m) or {}).get('speedup_vs_eager'))}, peak {_fmt((f.get(m) or {}).get('peak_mem_mb_pipeline'))} MB)"
            for m in ("default", "reduce-overhead"))
    return ", ".join(f"{k} {_fmt(f[k])}" for k in FIGURE_KEYS.get(step["name"], []) if k in f)


def _target_note(t: dict) -> str:
    """A target's note without the dry run's own remark, which the summary says once, at the end."""
    return (t.get("note") or "").replace("; " + DRY_NOTE, "").replace(DRY_NOTE, "")


def _md_notes(steps: list[dict]) -> list[str]:
    """The "Notes and failures" section (none when no step has any), with the end of each failed step's output."""
    lines: list[str] = []
    details = [s for s in steps if s["error"] or s["notes"] or any(_target_note(t) for t in s["targets"])]
    if details:
        lines += ["", "## Notes and failures", ""]
        for s in details:
            if s["error"]:
                lines.append(f"- **{s['name']}**: {s['error']}")
            for n in s["notes"]:
                lines.append(f"- {s['name']}: {n}")
            for t in s["targets"]:
                if _target_note(t):
                    lines.append(f"- {s['name']}, {t['name']}: {_target_note(t)}")
        failed = [s for s in steps if s["status"] != "passed" and s["log_tail"]]
        for s in failed:
            lines += ["", f"### {s['name']}: end of its output", "", "```", tail(s["log_tail"], 1500), "```"]
    return lines


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
    lines += _md_notes(report["steps"])
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


def md_path(out: Path) -> str:
    return str(out / MD_NAME)
