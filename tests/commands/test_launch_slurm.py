"""`infoview launch` against real SLURM daemons: DDP jobs, requeue, time limits, sweeps, bad input."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from infoview.cli import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_two_task_job_trains_with_ddp_over_gloo(slurm_cluster, slurm_jobs, tiny, tmp_path, capsys):
    result = slurm_jobs.launch(["pretrain", *slurm_jobs.common(tmp_path, tiny), "train.max_steps=4",
                                "launch.tasks_per_node=2", "launch.timeout_min=5", "launch.wait=true"], capsys)
    job = result["jobs"][0]
    assert job["state"] == "COMPLETED" and job["result"]["world_size"] == 2 and job["result"]["steps"] == 4
    run = tmp_path / "run"
    assert slurm_jobs.steps_logged(run) == [4]  # logged at the last step
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert Path(job["stdout"]).exists()


def test_a_job_requeued_mid_run_resumes_from_its_checkpoint(slurm_cluster, slurm_jobs, tiny, tmp_path, capsys):
    total = 300
    result = slurm_jobs.launch(["pretrain", *slurm_jobs.common(tmp_path, tiny), f"train.max_steps={total}",
                                "train.ckpt_every_steps=5", "train.log_every=1", "launch.timeout_min=10"], capsys)
    job_id = result["jobs"][0]["id"]
    slurm_jobs.wait_for_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", 20)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    fields = slurm_jobs.wait_for_state(job_id, "COMPLETED", timeout=400)
    assert int(fields["Restarts"]) >= 1
    run = tmp_path / "run"
    assert json.loads((run / "pretrain.json").read_text())["steps"] == total  # the step count of an uninterrupted run
    assert slurm_jobs.steps_logged(run) == list(range(1, total + 1))  # every step once: nothing lost, nothing doubled
    assert yaml.safe_load((run / "config.yaml").read_text())["_provenance"]["resumed_from"].endswith("last.pt")


def test_a_job_past_its_time_limit_is_requeued_by_the_checkpoint_hook_and_finishes(slurm_cluster, slurm_jobs, tiny,
                                                                                     tmp_path, capsys):
    # A 2-minute limit with the signal 115 s before it: SLURM, which checks limits every 30 s, signals each run
    # 5-35 s in, long before 1500 tiny steps are done on any CPU. Once the hook has saved and requeued the job,
    # the test gives the job a longer limit, so that the resumed run can finish instead of being cut again.
    slurm_jobs.wait_until_idle()
    total = 1500
    result = slurm_jobs.launch(["pretrain", *slurm_jobs.common(tmp_path, tiny), f"train.max_steps={total}",
                                "train.ckpt_every_steps=100", "train.log_every=1", "launch.timeout_min=2",
                                "launch.signal_delay_s=115", "launch.max_requeues=10"], capsys)
    job = result["jobs"][0]
    log = Path(job["stdout"])

    def extend_once_saved(job_id):
        if "pre-empted or out of time at step" in log.read_text():
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=30"], capture_output=True, timeout=60)

    fields = slurm_jobs.wait_for_state(job["id"], "COMPLETED", timeout=900, on_requeued=extend_once_saved)
    assert int(fields["Restarts"]) >= 1
    text = log.read_text()
    assert "this job is timed-out" in text and "pre-empted or out of time at step" in text  # saved between steps
    run = tmp_path / "run"
    assert json.loads((run / "pretrain.json").read_text())["steps"] == total
    assert slurm_jobs.steps_logged(run) == list(range(1, total + 1))


def test_a_sweep_runs_one_job_per_config(slurm_cluster, slurm_jobs, tiny, tmp_path, capsys):
    sweep = "launch.sweep=[objective.name=infonce, objective.name=ring objective.outer=0.5]"
    result = slurm_jobs.launch(["pretrain", *slurm_jobs.common(tmp_path, tiny), "train.max_steps=2",
                                "launch.timeout_min=5", "launch.wait=true", sweep], capsys)
    assert [j["state"] for j in result["jobs"]] == ["COMPLETED", "COMPLETED"]
    names = []
    for i in range(2):
        run = tmp_path / "run" / f"sweep{i}"
        assert json.loads((run / "pretrain.json").read_text())["steps"] == 2
        names.append(yaml.safe_load((run / "config.yaml").read_text())["objective"]["name"])
    assert names == ["infonce", "ring"]


def test_a_failed_job_says_failed_with_its_own_error_line(slurm_cluster, slurm_jobs, tiny, tmp_path, capsys):
    """Each rank fails in the job (the data is not there): the first rank's own last error line is said, and the
    job is never said to be COMPLETED first."""
    code = main(["launch", "pretrain", *slurm_jobs.common(tmp_path, tiny), "data.source=folder:/nonexistent",
                 "launch.tasks_per_node=2", "launch.timeout_min=5", "launch.wait=true", "launch.poll_s=0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any(line.endswith(": COMPLETED") for line in err), err
    assert "ended FAILED: rank " in err[-1] and ": folder /nonexistent does not exist; its log: " in err[-1], err


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "launch.partition=nope"], "unknown partition 'nope'"),
        (["pretrian"], "did you mean 'pretrain'"),
        (["pretrain", "--config", "missing.yaml"], "missing.yaml' does not exist"),
        (["pretrain", "train.epochz=3"], "did you mean 'train.epochs'"),
        (["pretrain", "launch.nodez=2"], "did you mean 'launch.nodes'"),
    ],
)
def test_bad_input_is_an_error_before_anything_is_submitted(slurm_cluster, tmp_path, capsys, args, message):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert main(["launch", *args, f"launch.folder={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
    assert not any(tmp_path.iterdir())  # no submission files either
