"""benchmarks/objectives_cifar10.py, shortened (--smoke) on a few real CIFAR-10 images: every stage runs,
the table, the JSON lines and the plot appear, and a second invocation reads the finished runs instead of
redoing them."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_smoke_run_writes_table_jsonl_and_plot_and_keeps_finished_runs(tiny_cifar10, tmp_path, run_benchmark):
    data = tiny_cifar10
    out = tmp_path / "bench"
    # one run (MoCo's, which needs the smoke queue): tests/test_benchmark_claims.py runs the same stages too
    args = ["--smoke", "--data", str(data), "--out", str(out), "--runs", "moco/ring", "--no-second-seed"]
    proc = run_benchmark("objectives_cifar10.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["run"] for x in lines] == ["random_init", "moco/ring"]
    for x in lines[1:]:
        assert x["steps"] == 3 and x["num_test"] == 40 and x["num_train"] == 40
        assert 0 <= x["knn_top1"] <= 100 and 0 <= x["linear_top1"] <= 100
        assert x["mi"] <= x["mi_ceiling"] and x["images_per_sec"] > 0
    table = (out / "table.md").read_text()
    assert table.strip() in proc.stdout  # what it prints is what it writes
    assert "| random init (floor) |" in table and "| moco/ring | 0 |" in table
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "moco_ring_s0" / "checkpoints" / "last.pt").exists()

    stamp = (out / "moco_ring_s0" / "pretrain.json").stat().st_mtime_ns
    again = run_benchmark("objectives_cifar10.py", args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ infoview pretrain" not in again.stderr and "$ infoview knn" not in again.stderr
    assert (out / "moco_ring_s0" / "pretrain.json").stat().st_mtime_ns == stamp
    assert (out / "table.md").read_text() == table


def test_data_without_splits_is_a_one_line_error(tmp_path, run_benchmark):
    proc = run_benchmark("objectives_cifar10.py", ["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: --data {tmp_path} must hold train/ and test/ (ImageFolder layout); "
        "CIFAR-10 as JPEGs is in ../shared/data/cifar10"
    ]
    assert not (tmp_path / "o").exists()
