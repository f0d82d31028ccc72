"""benchmarks/gpu_check.py: its CPU dry run writes the report a reader needs, and bad input is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
STEPS = ["pytest_gpu", "train_step_r18_32", "train_step_r50_224", "objectives", "simclr_vs_lightly",
         "cifar10_simclr_200", "compile_modes"]  # in order of value; views only when asked


def gpu_check(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "INFOVIEW_GPU_TESTS_ON_CPU")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_one_json_and_one_markdown(tmp_path):
    if not (CIFAR10 / "train").is_dir() or not (CIFAR10 / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR10} (the dry run packs a few of them)")
    out = tmp_path / "out"
    proc = gpu_check(["--dry-run", "--out", str(out)], timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # nothing else left there
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["all_passed"] and line["passed"] == len(STEPS)

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["finished"] is True
    assert report["device"]["name"] == "cpu" and report["device"]["torch"] and report["device"]["cpu_cores"]
    assert report["seconds"] <= report["budget_s"]
    pack = report["data"]["cifar10_pack"]
    assert report["commit"] and pack["train"]["images"] == 80 and pack["test"]["images"] == 40
    assert [s["name"] for s in report["steps"]] == STEPS
    for step in report["steps"]:
        assert step["status"] == "passed", (step["name"], step["error"], step["log_tail"][-2000:])
        assert step["seconds"] > 0 and step["commands"] and step["figures"], step["name"]
        assert all(c["returncode"] == 0 and not c["timed_out"] for c in step["commands"]), step["name"]
        for target in step["targets"]:
            assert {"name", "value", "target", "met"} <= target.keys()
    steps = {s["name"]: s for s in report["steps"]}

    tests = steps["pytest_gpu"]["figures"]
    assert tests["passed"] >= 10 and tests["failed"] == tests["errors"] == 0  # the CUDA-path tests ran on the CPU
    for name, backend in (("train_step_r18_32", "resident"), ("train_step_r50_224", "pytorch")):
        f = steps[name]["figures"]
        assert f["pipeline_img_per_s"] > 0 and f["model_only_img_per_s"] > 0 and f["ratio"] > 0
        assert f["loader_backend"].startswith(backend) and f["peak_mem_mb_pipeline"] > 0
        (t,) = steps[name]["targets"]
        assert t["target"] == ">= 0.95" and t["met"] == (f["ratio"] >= 0.95)
    assert "decoded on the device" in steps["train_step_r50_224"]["figures"]["loader_backend"]
    obj = steps["objectives"]["figures"]
    assert obj["results"]["2048"]["infonce"]["ms"] > 0 and "2048/ml_cpc_vs_infonce" in obj["checks"]
    e2e = steps["simclr_vs_lightly"]["figures"]
    assert e2e["ours"]["steps"] == 4 and e2e["ours"]["images_per_s_median"] > 0
    (vs,) = steps["simclr_vs_lightly"]["targets"]
    assert (vs["met"] is None) == ("lightly" not in e2e)  # lightly, where it is installed, timed beside it
    cifar = steps["cifar10_simclr_200"]["figures"]
    assert cifar["epochs_asked"] == cifar["epochs"] == 2 and cifar["images_per_s_median"] > 0
    assert 0 <= cifar["knn_top1"] <= 100 and cifar["num_train"] == 80 and cifar["num_test"] == 40
    # fewer than 200 epochs: the targets say so instead of passing or failing
    assert all(t["met"] is None and "2 of 200 epochs" in t["note"] for t in steps["cifar10_simclr_200"]["targets"])
    modes = steps["compile_modes"]["figures"]
    assert modes["default"]["pipeline_img_per_s"] > 0 and modes["reduce-overhead"]["pipeline_img_per_s"] > 0

    md = (out / "gpu_check.md").read_text()
    assert "dry run" in md and f"{len(STEPS)} of {len(STEPS)} steps passed" in md
    for name in STEPS:
        assert f"| {name} | passed |" in md

    again = gpu_check(["--dry-run", "--out", str(out)])  # an earlier result is kept unless asked
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    # a --cifar10 with both splits, so that the checks after it are reached without ../shared/data
    cifar = tmp_path / "cifar"
    for split in ("train", "test"):
        (cifar / split).mkdir(parents=True)
    cases = [
        (["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")], "--make-data"),
        (["--make-data", str(tmp_path / "d"), "--cifar10", str(tmp_path / "nothing")], "train/"),
        (["--make-data", str(tmp_path / "full"), "--cifar10", str(cifar)], "--overwrite"),
        (["--make-data", str(tmp_path / "d"), "--cifar10", str(cifar), "--test-per-class", "0"], "--test-per-class"),
        (["--budget-s", "0"], "--budget-s"),
        (["--cifar-epochs", "-1"], "--cifar-epochs"),
        (["--make-data", str(tmp_path / "d"), "--dry-run"], "--make-data"),
    ]
    for args, says in cases:
        proc = gpu_check(args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gpu_check: error:") and says in lines[0], (args, lines)
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("script, args", [
    ("lightly_simclr.py", ["--data", "{tmp}"]),
    ("objectives.py", ["--rows", "8"]),
])
def test_a_peer_that_is_not_installed_is_one_line(tmp_path, script, args):
    """lightly is the benchmarks' peer, not a dependency: without it they stop with one line saying how to get it."""
    argv = [str(REPO / "benchmarks" / script), *(a.format(tmp=tmp_path) for a in args)]
    code = ("import runpy, sys; sys.modules['lightly'] = None  # as if it were not installed\n"
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "lightly" in lines[0] and "pip install --no-deps lightly" in lines[0]
