"""`infoview launch` without a cluster: the sbatch script it would submit, and the local executor."""
from __future__ import annotations

import json

import pytest

from infoview.cli import main
from infoview.launch.job import resumable


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


@pytest.mark.parametrize("args, message", [
    ([], "launch needs a command"),
    (["launch"], "cannot launch itself"),
    (["pretrain", "launch.executor=kubernetes"], "launch.executor must be one of"),
    (["pretrain", "launch.executor=local", "launch.nodes=2"], "launch.nodes must be 1"),
])
def test_bad_launch_settings(args, message, capsys, tmp_path):
    assert main(["launch", *args, f"launch.folder={tmp_path}"] if args else ["launch"]) == 2
    assert message in capsys.readouterr().err
