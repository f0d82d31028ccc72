"""`infoview launch` without a cluster: the sbatch script it would submit, and the local executor."""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from infoview.cli import main
from infoview.commands._launch_job import resumable
from infoview.commands.launch import first_failed_rank


def test_dry_run_prints_the_sbatch_script_for_2_nodes_of_8_gpus(tmp_path, capsys):
    assert main(["launch", "pretrain", "--config", "mocov2_infonce_imagenet", "launch.dry_run=true",
                 "launch.nodes=2", "launch.gpus_per_node=8", "launch.cpus_per_task=10", "launch.mem_gb=480",
                 "launch.partition=gpu", "launch.timeout_min=2880", "launch.account=vision",
                 f"launch.folder={tmp_path}"]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --partition=gpu", "#SBATCH --time=2880",
                 "#SBATCH --account=vision", "#SBATCH --signal=USR2@90", "srun"):
        assert line in script, line
    assert not any(tmp_path.iterdir())  # nothing submitted, nothing written


def test_a_distributed_job_ends_when_one_rank_dies_and_a_one_process_job_is_left_alone(tmp_path, capsys):
    assert main(["launch", "pretrain", "launch.nodes=2", "launch.tasks_per_node=2", "launch.dry_run=true",
                 f"launch.folder={tmp_path}"]) == 0
    srun = [line for line in capsys.readouterr().out.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1" in srun[0]
    assert main(["launch", "linear", "launch.dry_run=true", f"launch.folder={tmp_path}"]) == 0
    assert "--kill-on-bad-exit" not in capsys.readouterr().out


def test_the_rank_that_ended_first_is_read_from_sruns_report_of_the_last_run(tmp_path):
    log = tmp_path / "7_0_log.err"
    earlier = ("srun: error: node1: tasks 0-1: Terminated\n"
               "slurmstepd-node1: error: *** JOB 7 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO JOB REQUEUE ***\n")
    last = ("submitit WARNING - Bypassing signal SIGTERM\n"
            "srun: error: node2: task 3: Killed\n"
            "srun: launch/slurm: _step_signal: Terminating StepId=7.0\n"
            "[rank0]: RuntimeError: Connection closed by peer\n"
            "srun: error: node1: tasks 0-1: Exited with exit code 1\n")
    log.write_text(earlier + last)
    assert first_failed_rank(log) == (3, "node2", "Killed")  # not task 0 of the run before the requeue
    log.write_text(last.replace("srun: error: node2: task 3: Killed\n", ""))
    assert first_failed_rank(log) == (0, "node1", "Exited with exit code 1")
    log.write_text(earlier)  # a requeued run that has not failed (yet)
    assert first_failed_rank(log) is None
    assert first_failed_rank(tmp_path / "missing.err") is None


def test_a_requeued_pretraining_job_resumes_and_others_rerun():
    assert resumable("pretrain", ["--config", "c.yaml", "train.resume=never"]) == ["--config", "c.yaml",
                                                                                  "train.resume=auto"]
    assert resumable("linear", ["--config", "c.yaml"]) == ["--config", "c.yaml"]


@pytest.mark.slow
def test_the_local_executor_runs_the_command_here(tmp_path, capsys):
    tiny = ["data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.cifar_stem=true",
            "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16",
            "train.progress=false", "train.eval_every=0", "train.max_steps=2"]
    assert main(["launch", "pretrain", *tiny, f"out_dir={tmp_path / 'run'}", f"launch.folder={tmp_path / 'l'}",
                 "launch.executor=local", "launch.wait=true", "launch.timeout_min=5"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["jobs"][0]["state"] == "COMPLETED" and result["jobs"][0]["result"]["steps"] == 2
    assert (tmp_path / "run" / "pretrain.json").exists()


@pytest.mark.slow
def test_a_failed_local_job_says_so_with_its_own_error_line_never_completed_first(tmp_path, capsys):
    assert main(["launch", "pretrain", "data.source=folder:/nonexistent", f"out_dir={tmp_path / 'run'}",
                 f"launch.folder={tmp_path / 'l'}", "launch.executor=local", "launch.wait=true",
                 "launch.poll_s=0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any(line.endswith(": COMPLETED") for line in err), err
    assert err[-2].endswith(": FAILED")
    assert "ended FAILED: folder /nonexistent does not exist; logs in" in err[-1]


def test_the_failing_ranks_own_last_error_line_is_read_from_its_log(tmp_path):
    """srun names the rank that ended first; its own log says why (here rank 3's, not rank 0's)."""
    from types import SimpleNamespace

    from infoview.commands.launch import _failure, last_error_line

    folder = tmp_path / "7"
    folder.mkdir()
    (folder / "7_0_log.err").write_text("srun: error: node2: task 3: Exited with exit code 1\n"
                                        "srun: error: node1: tasks 0-2: Terminated\n")
    (folder / "7_3_log.err").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "submitit ERROR (2026-01-01 00:00:00,000) - Submitted job triggered an exception\n")
    job = SimpleNamespace(job_id="7", paths=SimpleNamespace(stderr=folder / "7_0_log.err", folder=folder))
    said = _failure(job, "FAILED", None)
    assert said.startswith("rank 3 on node node2 ended first (Exited with exit code 1) and the other ranks stopped "
                           "with it: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB; its log: ")
    assert said.endswith(str(folder / "7_3_log.err"))
    assert last_error_line("Traceback ...\ninfoview.errors.ConfigError: data.batch_size=3 is the global batch") == \
        "data.batch_size=3 is the global batch"
    assert last_error_line("all went well\n") is None


@pytest.mark.parametrize("args, message", [
    ([], "launch needs a command"),
    (["launch"], "cannot launch itself"),
    (["pretrain", "launch.executor=kubernetes"], "launch.executor must be one of"),
    (["pretrain", "launch.executor=local", "launch.nodes=2"], "launch.nodes must be 1"),
])
def test_bad_launch_settings(args, message, capsys, tmp_path):
    assert main(["launch", *args, f"launch.folder={tmp_path}"] if args else ["launch"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command, launch", [
    ("segment", ["launch.gpus_per_node=8"]),
    ("linear", ["launch.tasks_per_node=4"]),
    ("knn", ["launch.nodes=2"]),
    ("mi-bench", ["launch.gpus_per_node=2", "launch.tasks_per_node=2"]),
])
def test_a_one_process_command_is_not_launched_on_many(command, launch, capsys, tmp_path):
    """Eight copies of a one-process command would all write into one out_dir: refused before anything is sent."""
    assert main(["launch", command, *launch, "launch.dry_run=true", f"launch.folder={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"'{command}' runs as one process on one device" in err and "launch.tasks_per_node=1" in err
    assert not any(tmp_path.iterdir())


def test_a_one_process_command_gets_one_task_and_a_distributed_one_one_per_gpu(tmp_path, capsys):
    assert main(["launch", "segment", "launch.gpus_per_node=1", "launch.dry_run=true",
                 f"launch.folder={tmp_path}"]) == 0
    assert "#SBATCH --ntasks-per-node=1" in capsys.readouterr().out
    assert main(["launch", "detect", "launch.gpus_per_node=4", "launch.dry_run=true",
                 f"launch.folder={tmp_path}"]) == 0
    assert "#SBATCH --ntasks-per-node=4" in capsys.readouterr().out


def test_a_preempted_job_requeues_only_when_its_command_can_resume(monkeypatch, capsys):
    from infoview.commands import _launch_job

    job = _launch_job.CommandJob()
    assert job.checkpoint("knn", ["--config", "c.yaml"]) is None  # starting over would meet its own folder
    assert "'knn' cannot resume, so the job is not requeued" in capsys.readouterr().err
    delayed = job.checkpoint("pretrain", ["--config", "c.yaml"])  # no trainer running here: nothing to save
    assert delayed.args == ("pretrain", ["--config", "c.yaml", "train.resume=auto"])
    for evaluator in ("linear", "detect", "segment"):  # they resume when run again as they were
        assert job.checkpoint(evaluator, ["--config", "c.yaml"]).args == (evaluator, ["--config", "c.yaml"])


@pytest.mark.parametrize("override", [
    r'launch.partition="gpu\ntouch /tmp/pwned\n#"',
    r'launch.comment="a\ntouch /tmp/pwned"',
    r'launch.job_name="x\rtouch /tmp/pwned"',
    r'launch.account="a\ntouch /tmp/pwned"',
    r'launch.qos="a\x1b[2Jb"',
    r'launch.constraint="a\ttouch /tmp/pwned"',
    r'launch.setup=["module load x\ntouch /tmp/pwned"]',
])
def test_a_launch_value_with_a_control_character_never_reaches_the_script(override, tmp_path, capsys):
    """submitit quotes a value but keeps its newline, after which the rest would be a line of the script.

    The overrides are written as a shell passes them: YAML's double quotes turn the two characters \\n into a newline.
    """
    assert main(["launch", "pretrain", "--config", "demo", "launch.dry_run=true", override,
                 f"launch.folder={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert "touch" not in out and "#SBATCH" not in out
    key = override.split("=", 1)[0]
    assert len(err.strip().splitlines()) == 1 and f"{key} holds a control character" in err


def test_setup_lines_are_commands_by_design(tmp_path, capsys):
    assert main(["launch", "pretrain", "launch.dry_run=true", 'launch.setup=["module load cuda", "export A=1"]',
                 f"launch.folder={tmp_path}"]) == 0
    assert "\nmodule load cuda\nexport A=1\n" in capsys.readouterr().out


SEGMENT = ["backbone=random:resnet18", "data.source=shapes", "data.size=32", "data.batch_size=2", "train.max_steps=4",
           "data.num_workers=0", "train.progress=false", "ignore_index=0", "train.device=cpu", "plot.num_images=0",
           "eval.max_images=4", "output_stride=32"]


@pytest.mark.slow
def test_a_preempted_evaluator_saves_after_its_step_is_requeued_as_it_was_and_ends_as_a_run_never_stopped(
        tmp_path, monkeypatch, capsys):
    import torch

    from infoview.commands._launch_job import CommandJob
    from infoview.training import loop

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # (the job's environment: one task)
    job, times = CommandJob(), ("out_dir", "time_s", "train_s", "eval_s")
    expected = job("segment", [*SEGMENT, f"out_dir={tmp_path / 'whole'}"])
    args, requeued = [*SEGMENT, f"out_dir={tmp_path / 'cut'}"], []

    def submitits(signum, frame):  # what submitit's handler does in task 0: the job's checkpoint, requeue, exit
        requeued.append(job.checkpoint("segment", args))
        sys.exit(-1)

    real, taken = loop.optimizer_step, []

    def step(*a, **k):  # SLURM's signal comes during the second step: held until that step ends
        if len(taken) == 1:
            os.kill(os.getpid(), signal.SIGUSR2)
        real(*a, **k)
        taken.append(1)

    monkeypatch.setattr(loop, "optimizer_step", step)
    previous = signal.signal(signal.SIGUSR2, submitits)
    try:
        with pytest.raises(SystemExit):
            job("segment", args)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert len(taken) == 2 and torch.load(last, weights_only=True)["step"] == 2
    assert f"infoview launch: pre-empted or out of time at step 2; saved {last}" in capsys.readouterr().out
    (delayed,) = requeued
    assert delayed.args == ("segment", args)  # run again as it was
    monkeypatch.setattr(loop, "optimizer_step", real)
    result = delayed.function(*delayed.args)
    assert {k: v for k, v in result.items() if k not in times} == {k: v for k, v in expected.items() if k not in times}
    assert not last.exists()
