"""benchmarks/claims.py, shortened (--smoke) on a few real CIFAR-10 images: a run goes through pretraining, kNN
and the linear probe into results.jsonl and the table, names its budget and machine, a second invocation
reads the finished run instead of redoing it, and --table shows the finished runs without training."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_a_claim_run_is_recorded_with_its_budget_and_kept(tiny_cifar10, tmp_path, run_benchmark):
    data = tiny_cifar10
    out = tmp_path / "claims"
    args = ["--smoke", "--data", str(data), "--out", str(out), "--runs", "ir/infonce", "--seeds", "0"]
    proc = run_benchmark("claims.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert line["run"] == "ir/infonce" and line["seed"] == 0 and line["budget"] == "cpu-r18half-10ep"
    assert "cores of" in line["machine"] and line["num_train"] == line["num_test"] == 40
    assert 0 <= line["knn_top1"] <= 100 and line["mi"] <= line["mi_ceiling"]
    config = (out / "ir_infonce_s0" / "config.yaml").read_text()
    assert "backend: resident" in config and "num_negatives: 16" in config
    table = (out / "table.md").read_text()
    assert table.strip() in proc.stdout and "| ir/infonce | 0 |" in table and "Budget cpu-r18half-10ep" in table
    stamp = (out / "ir_infonce_s0" / "pretrain.json").stat().st_mtime_ns
    again = run_benchmark("claims.py", args)
    assert again.returncode == 0 and "$ infoview pretrain" not in again.stderr
    assert (out / "ir_infonce_s0" / "pretrain.json").stat().st_mtime_ns == stamp
    shown = run_benchmark("claims.py", ["--table", "--out", str(out), "--runs", "ir/infonce", "simclr/ring",
                                        "--seeds", "0"])
    assert shown.returncode == 0 and "| ir/infonce | 0 |" in shown.stdout and "simclr/ring" not in shown.stdout
    assert "(1 of 2 runs finished" in shown.stdout and not (out / "simclr_ring_s0").exists()  # nothing trained
