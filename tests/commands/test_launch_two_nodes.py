"""`infoview launch` across two SLURM nodes on this machine (scripts/slurm-local.sh, SLURM_LOCAL_NODES=2), over
gloo on CPU: 2 nodes x 2 ranks train as one run of the global batch, the cross-rank gradients hold across nodes,
and a requeued or broken job resumes from its checkpoint on both nodes."""
from __future__ import annotations

import csv
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from infoview.cli import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TWO_NODES = ["launch.nodes=2", "launch.tasks_per_node=2"]
WORKER = Path(__file__).with_name("two_node_grads.py")
ON_NODE = {0: 0, 1: 0, 2: 1, 3: 1}  # rank -> node index: SLURM fills the first node first


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv's rows of training steps (not those of the online monitors)."""
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def test_pretraining_on_two_nodes_is_one_run_of_the_global_batch(slurm_cluster_2, slurm_jobs, tiny, tmp_path,
                                                                  capsys):
    # the demo at tiny settings, with its online monitors at the end (rank 0 evaluates, the others wait)
    args = ["--config", "demo", *tiny, "train.max_steps=6", "train.log_every=1", "train.eval_every=1"]
    result = slurm_jobs.launch(["pretrain", *args, *slurm_jobs.common(tmp_path, []), *TWO_NODES,
                                "launch.timeout_min=5", "launch.wait=true"], capsys)
    job = result["jobs"][0]
    assert job["state"] == "COMPLETED" and job["result"]["world_size"] == 4 and job["result"]["steps"] == 6
    assert slurm_jobs.job_fields(job["id"])["NodeList"] == "127.0.0.[1-2]"
    assert slurm_jobs.task_starts(tmp_path / "launch" / job["id"], job["id"]) == {r: [n] for r, n in ON_NODE.items()}
    run = tmp_path / "run"
    # rank 0 alone writes: one checkpoint holding every rank's random state (with the one before it, kept by the
    # final save after the online monitors), one metrics.csv with each step once
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 4 and len(state["rng"]) == 4
    assert [p.relative_to(run) for p in run.rglob("metrics.csv")] == [Path("metrics.csv")]
    assert slurm_jobs.steps_logged(run) == [1, 2, 3, 4, 5, 6]

    # one process with the same global batch: the same learning rate (scaled from optim.ref_batch to the global
    # batch) and the same log m (the ceiling of the bound, certified on the same 16 x 16 cross-view matrix)
    assert main(["pretrain", *args, "train.max_steps=1", f"out_dir={tmp_path / 'one'}"]) == 0
    one = json.loads((tmp_path / "one" / "pretrain.json").read_text())
    two = json.loads((run / "pretrain.json").read_text())
    assert two["global_batch"] == one["global_batch"] == 16
    assert two["peak_lr"] == one["peak_lr"] == pytest.approx(0.002 * 16 / 128)  # demo: lr 0.002 at batch 128
    assert two["mi_ceiling"] == one["mi_ceiling"]

    # 4 processes under torchrun on one node, same seed: the same loss curve. The ranks hold the same shards,
    # seeds and initial weights and run the same float32 operations (gloo's ring over the same 4 ranks; the nodes
    # only change the address a peer is reached at), so the values agree bit for bit in practice; the tolerance
    # is metrics.csv's rounding to 6 significant digits (rel 1e-5), nothing more.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                           "-m", "infoview.cli", "pretrain", *args, f"out_dir={tmp_path / 'torchrun'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = metrics(run), metrics(tmp_path / "torchrun")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for key in ("loss", "mi", "mi_ceiling", "lr"):
        assert [float(r[key]) for r in ours] == pytest.approx([float(r[key]) for r in theirs], rel=1e-5), key
    assert float(metrics(tmp_path / "one")[0]["loss"]) != pytest.approx(float(ours[0]["loss"]), rel=1e-3)  # not trivial
    # the same weights at the end: rank 0's online kNN top-1 on the held-out digits is torchrun's
    torchrun = json.loads((tmp_path / "torchrun" / "pretrain.json").read_text())
    assert two["online_knn_top1"] == pytest.approx(torchrun["online_knn_top1"], abs=1e-6)


def test_gradients_across_two_nodes_equal_one_process_on_the_whole_batch(slurm_cluster_2, tmp_path):
    torch.manual_seed(1)
    views = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    torch.save(views, tmp_path / "views.pt")
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "OMP_NUM_THREADS": "1"}
    srun = ["srun", "--partition=debug", "--nodes=2", "--ntasks-per-node=2", "--kill-on-bad-exit=1", "--time=5"]
    proc = subprocess.run([*srun, sys.executable, str(WORKER), str(tmp_path / "views.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "out.pt")
    # ranks 0-1 ran on the first node and 2-3 on the second, met at the first node's address, and ran this checkout
    assert [(rank, node) for rank, node, _, _ in ddp["where"]] == [(r, f"127.0.0.{n + 1}") for r, n in ON_NODE.items()]
    assert {addr for _, _, addr, _ in ddp["where"]} == {"127.0.0.1"}
    assert {Path(f).parent.parent for _, _, _, f in ddp["where"]} == {Path(__file__).resolve().parents[2]}

    worker = runpy.run_path(str(WORKER))
    for name in worker["CASES"]:
        ref, figures = worker["step"](worker["build"](name, 4), views)  # one process, the concatenated batch
        grads, ddp_figures = ddp[name]
        assert grads.keys() == ref.keys(), name
        # float32 sums in another order (gloo's all-reduce over 4 ranks against one process's): measured within
        # 3e-6 of each tensor's largest entry; a gradient through a wrong gather or shuffle is off by far more
        for key, g in ref.items():
            torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
        assert ddp_figures[1] == pytest.approx(figures[1], rel=1e-5, abs=1e-6), name  # the certified bound
    # the BatchNorm groups matter: the whole batch in one group, unshuffled, gives other gradients
    other, _ = worker["step"](worker["build"]("moco_infonce", 4, bn="none"), views)
    assert any(not torch.allclose(other[k], g, rtol=1e-3, atol=1e-5) for k, g in ddp["moco_infonce"][0].items())


def test_a_two_node_job_requeued_mid_run_resumes_on_both_nodes(slurm_cluster_2, slurm_jobs, tiny, tmp_path, capsys):
    total = 240
    result = slurm_jobs.launch(["pretrain", *slurm_jobs.common(tmp_path, tiny), *TWO_NODES, f"train.max_steps={total}",
                                "train.ckpt_every_steps=5", "train.log_every=1", "launch.timeout_min=10"], capsys)
    job_id = result["jobs"][0]["id"]
    saved = slurm_jobs.wait_for_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", 10)
    slurm_jobs.requeue(job_id)
    fields = slurm_jobs.wait_for_state(job_id, "COMPLETED", timeout=300)
    restarts = int(fields["Restarts"])
    assert restarts >= 1 and fields["NodeList"] == "127.0.0.[1-2]"
    run = tmp_path / "run"
    assert json.loads((run / "pretrain.json").read_text())["steps"] == total  # the step count of an uninterrupted run
    assert slurm_jobs.steps_logged(run) == list(range(1, total + 1))  # every step once: nothing lost, nothing doubled
    assert yaml.safe_load((run / "config.yaml").read_text())["_provenance"]["resumed_from"].endswith("last.pt")
    # every rank started again on its own node, and resumed mid-run with its own saved random state
    folder = tmp_path / "launch" / job_id
    assert slurm_jobs.task_starts(folder, job_id) == {r: [n] * (1 + restarts) for r, n in ON_NODE.items()}
    logs = "".join(p.read_text() for p in folder.glob("*_log.*"))
    assert "already done" not in logs and "fresh seed" not in logs and saved < total


def _task_pid(launch_folder: Path, rank: int) -> int:
    """The process of the job's task ``rank`` (this test's jobs only: its launch folder is in the command line)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in cmdline and str(launch_folder).encode() in b" ".join(cmdline) \
                and f"SLURM_PROCID={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no process of task {rank} under {launch_folder}")


def test_a_dead_rank_fails_the_job_at_once_naming_it_and_a_requeue_resumes(slurm_cluster_2, slurm_jobs, tiny,
                                                                             tmp_path, capsys):
    total = 80
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    kill: dict = {}

    def kill_rank_3():  # once a checkpoint is written, as a node's process dies mid-run
        try:
            kill["saved"] = slurm_jobs.wait_for_checkpoint(last, 10)
            os.kill(_task_pid(tmp_path / "launch", 3), signal.SIGKILL)
            kill["at"] = time.time()
        except BaseException as exc:  # shown by the assertion below
            kill["error"] = exc

    killer = threading.Thread(target=kill_rank_3, daemon=True)
    killer.start()
    code = main(["launch", "pretrain", *slurm_jobs.common(tmp_path, tiny), *TWO_NODES, f"train.max_steps={total}",
                 "train.ckpt_every_steps=5", "train.log_every=1", "launch.timeout_min=10", "launch.wait=true",
                 "launch.poll_s=0.5"])
    ended = time.time()
    killer.join(timeout=60)
    out, err = capsys.readouterr()
    assert "at" in kill, kill.get("error")
    assert code == 2 and "ended FAILED: rank 3 on node 127.0.0.2 ended first (Killed)" in err, err[-2000:]
    assert ended - kill["at"] < 60  # srun --kill-on-bad-exit ends the other ranks at once (here in ~5 s)
    state = torch.load(last, weights_only=True)  # intact: written whole or not at all
    assert state["step"] >= kill["saved"] and state["step"] % 5 == 0 and state["world_size"] == 4

    job_id = out.split("as job ", 1)[1].split()[0]
    slurm_jobs.requeue(job_id)
    slurm_jobs.wait_for_state(job_id, "COMPLETED", timeout=300)
    run = tmp_path / "run"
    assert json.loads((run / "pretrain.json").read_text())["steps"] == total
    assert slurm_jobs.steps_logged(run) == list(range(1, total + 1))
