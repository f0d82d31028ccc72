"""benchmarks/train_step.py runs on a CPU and prints one JSON line with its figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
KEYS = {
    "benchmark", "case", "device", "arch", "size", "global_batch", "steps", "pipeline_img_per_s",
    "model_only_img_per_s", "ratio", "data_share", "peak_mem_mb_pipeline", "peak_mem_mb_model_only",
    "loader_backend", "torch", "config",
}


def test_train_step_benchmark_prints_one_json_line():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--config", "demo", "--device", "cpu",
        "--set", "data.batch_size=32", "--set", "augment.size=16", "--steps", "2", "--warmup", "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # nothing else on stdout
    out = json.loads(lines[0])
    assert KEYS <= set(out), KEYS - set(out)
    assert out["benchmark"] == "train_step" and out["case"] == "custom"
    assert out["global_batch"] == 32 and out["steps"] == 2 and out["size"] == 16
    assert out["device"].startswith("cpu")
    assert out["pipeline_img_per_s"] > 0 and out["model_only_img_per_s"] > 0
    assert out["ratio"] > 0
    assert out["data_share"] == pytest.approx(1 - out["ratio"], abs=2e-3)
    assert len(out["model_only_runs_img_per_s"]) == 2 and len(out["pipeline_runs_img_per_s"]) == 1
    assert out["peak_mem_mb_pipeline"] > 0 and out["peak_mem_mb_model_only"] > 0
    assert "data.batch_size=32" in out["config"] and "train.eval_every=0" in out["config"]
