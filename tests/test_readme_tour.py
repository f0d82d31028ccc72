"""Every command of the README's tour, run shortened, in order, so that the tour cannot break.

The commands are read from the README itself (the bash block under "A short tour"), run from a scratch
folder beside which ../shared is the real shared data (commands that need it skip without it), with
overrides appended that make each one take seconds: a few steps, small images, no workers.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.slow

SHORT = {
    "pretrain": ["train.max_steps=2", "train.eval_every=0", "data.batch_size=16", "data.num_workers=0",
                 "train.progress=false", "train.threads=1"],
    "distill": ["train.max_steps=2", "train.eval_every=0", "data.batch_size=16", "data.num_workers=0",
                "train.progress=false", "train.threads=1", "crd.num_negatives=64"],
    "linear": ["train.epochs=2", "data.num_workers=0", "train.progress=false"],
    "knn": ["data.num_workers=0", "train.progress=false"],
    "detect": ["train.max_steps=2", "model.min_size=64", "model.max_size=96", "data.num_workers=0",
               "train.progress=false", "data.holdout=4"],
    "segment": ["train.max_steps=2", "data.size=64", "data.num_workers=0", "train.progress=false"],
    "mi-bench": ["steps_per_level=5", "hidden=16", "embed_dim=4"],
}
# the DDP line pretrains MoCo v2 on ImageNet with 8 GPUs: here 2 CPU processes on digits with a small ResNet
DDP = ["data.source=digits", "data.eval_split=test", "augment.size=32", "data.resolution=0", "model.arch=resnet18",
       "model.kwargs.channels=[8,16,32,64]", "moco.queue_size=64"]


def tour_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## A short tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    block = re.sub(r"\\\n\s*", " ", block)  # join continued lines
    commands = []
    for line in block.splitlines():
        line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if line:
            commands.append(line)
    return commands


def argv_of(command: str) -> tuple[list[str], str]:
    """The shortened command line, and the infoview command it runs."""
    words = shlex.split(command)
    if words[0] == ".venv/bin/torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 *["--nproc_per_node=2" if w == "8" else w for w in words[1:] if w != "--nproc_per_node"]]
        return words + SHORT["pretrain"] + DDP, "pretrain"
    assert words[0] == ".venv/bin/infoview", command
    name = words[1]
    extra = [] if "--help" in words or name == "list" else SHORT.get(name, [])
    return [sys.executable, "-m", "infoview.cli", *words[1:], *extra], name


def test_the_tour_is_what_the_readme_shows():
    names = [argv_of(c)[1] for c in tour_commands()]
    assert names[:3] == ["--help", "pretrain", "list"] and "mi-bench" in names and names.count("pretrain") >= 3


def test_every_tour_command_runs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ran, skipped = [], []
    for command in tour_commands():
        if "../shared" in command and not SHARED_DATA.is_dir():
            skipped.append(command)
            continue
        argv, name = argv_of(command)
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n-> {' '.join(argv)}\n{proc.stderr[-3000:]}"
        ran.append(name)
    assert "export" in ran and "distill" in ran and ran.count("linear") == 2 and "mi-bench" in ran
    assert (work / "runs" / "mine" / "linear" / "linear.json").is_file()  # the two probes did not overwrite
    assert (work / "runs" / "mine" / "linear_random" / "linear.json").is_file()  # each other
    if skipped:
        pytest.skip(f"ran {len(ran)} tour commands; {len(skipped)} need ../shared/data, which is missing")
