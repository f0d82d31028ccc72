"""The README's tour, run as written, in order, and the figures the README states checked against what it prints.

The commands are read from the README itself (the bash block under "A short tour") and run from a scratch
folder as the README shows them: nothing is shortened, so every line must be sized for a 2-core CPU. The one
line marked "on a cluster" (MoCo v2 on ImageNet with 8 GPUs) cannot run here; it runs as 2 CPU processes on
the digits instead. The data the README's Data section fetches cannot be downloaded here either: each fetch's
folder is linked to the project's copy of the very same files in ../shared/data (shared/data/README.md names
their origins: the repositories and archive the fetch lines use), and the tour skips without that copy.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
README = (REPO / "README.md").read_text(encoding="utf-8")

#: what each fetch line of the README's Data section leaves in data/, and the copy of those files in ../shared/data
FETCHED = {"data/cifar10_jpeg": "cifar10", "data/PennFudanPed": "pennfudan", "data/coco128": "coco128"}
TORCHVISION = "data/cifar10"  #: torchvision's CIFAR-10 download: no copy here, and no tour line reads it
CLUSTER = "on a cluster"  #: the comment that marks a tour line not meant for this machine
SLOWEST = 300  #: seconds: "finishes on a 2-core CPU in a few minutes as written", with room for a busy machine
# the cluster line pretrains MoCo v2 on ImageNet with 8 GPUs: here 2 CPU processes on digits with a small ResNet
DDP = ["data.source=digits", "data.eval_split=test", "augment.size=32", "data.resolution=0", "model.arch=resnet18",
       "model.kwargs.channels=[8,16,32,64]", "moco.queue_size=64", "train.max_steps=2", "train.eval_every=0",
       "data.batch_size=16", "data.num_workers=0", "train.progress=false", "train.threads=1"]


def bash_block(section: str) -> list[tuple[str, str]]:
    """``(command, comment)`` for each line of the first bash block after ``section``, continued lines joined."""
    block = README.split(section, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        parts = re.split(r"\s+#\s", line, maxsplit=1)
        if parts[0].strip():
            lines.append((parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""))
    return lines


def tour() -> list[tuple[str, str]]:
    return bash_block("## A short tour")


def fetched_folders() -> dict[str, str]:
    """``{folder: fetch line}`` for each line of the Data section: a clone's folder, an archive's, torchvision's."""
    out = {}
    for command, _ in bash_block("## Data"):
        words = shlex.split(command)
        if words[:2] == ["git", "clone"]:
            out[words[-1]] = command
        elif "unzip" in words:  # PennFudanPed.zip holds one folder, PennFudanPed/
            archive = next(w for w in words if w.endswith(".zip") and w.startswith("data/"))
            out[str(Path(words[words.index("-d") + 1]) / Path(archive).stem)] = command
        elif "torchvision.datasets.CIFAR10" in command:
            out[re.search(r"CIFAR10\('([^']+)'", command).group(1)] = command
        else:
            raise AssertionError(f"a Data line this test does not know: {command}")
    return out


def argv_of(command: str) -> tuple[list[str], str]:
    """The command line to run, and the infoview command it is."""
    words = shlex.split(command)
    if words[0] == ".venv/bin/torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 *["--nproc_per_node=2" if w == "8" else w for w in words[1:] if w != "--nproc_per_node"]]
        return words + DDP, "pretrain"
    assert words[0] == ".venv/bin/infoview", command
    return [sys.executable, "-m", "infoview.cli", *words[1:]], words[1]


def test_the_tour_is_what_the_readme_shows():
    names = [argv_of(c)[1] for c, _ in tour()]
    assert names[:4] == ["--help", "pretrain", "list", "list"] and "mi-bench" in names and names.count("pretrain") >= 4
    assert [c for c, comment in tour() if CLUSTER in comment] == [c for c, _ in tour() if "torchrun" in c]


def test_every_data_path_the_readme_uses_is_fetched_by_a_line_it_shows():
    folders = fetched_folders()
    assert set(folders) == {*FETCHED, TORCHVISION}
    assert "../shared" not in README  # a user has no ../shared/data
    outside = README.split("## Data", 1)[0] + README.split("## A short tour", 1)[1]  # all but the fetch lines
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", outside, re.S))
    used = set(re.findall(r"(?<![\w./])(data/[\w.-]+)", blocks))
    from infoview.config import read_yaml

    for command, comment in tour():  # and what the tour's presets read (ImageNet: on a cluster, and said so)
        words = shlex.split(command)
        if CLUSTER in comment:
            continue
        if "--config" in words:
            source = read_yaml(words[words.index("--config") + 1]).get("data", {}).get("source", "")
            used |= set(re.findall(r"(?<![\w./])(data/[\w.-]+)", source))
    assert used and all(any(path == f or path.startswith(f + "/") for f in folders) for path in used), used


def test_a_long_run_shown_beside_the_tour_is_its_line_at_full_length():
    """The CIFAR-10 preset's full run (Results) is the tour's line without its length key (and its own out_dir)."""
    full = shlex.split(README.split("### CIFAR-10 in ten minutes on a CPU", 1)[1].split("```bash", 1)[1]
                       .split("```", 1)[0].strip())
    short = shlex.split(next(c for c, _ in tour() if "simclr_mlcpc_cifar10_cpu" in c))
    drop = ("out_dir=", "train.max_steps=")
    assert [w for w in short if not w.startswith(drop)] == [w for w in full if not w.startswith(drop)]
    assert any(w.startswith("train.max_steps=") for w in short) and not any(w.startswith(drop[1]) for w in full)


def _link_the_data(work: Path) -> None:
    for folder, shared in FETCHED.items():
        (work / folder).parent.mkdir(parents=True, exist_ok=True)
        (work / folder).symlink_to(SHARED_DATA / shared)


def _result(printed: dict, fragment: str) -> dict:
    """What the one tour line that contains ``fragment`` printed (its JSON result)."""
    hits = [result for command, result in printed.items() if fragment in command]
    assert len(hits) == 1, (fragment, list(printed))
    return hits[0]


def _figures_match_the_readme(work: Path, printed: dict) -> None:
    """The figures the README states are what the tour printed (and what `make demo`'s report prints)."""
    demo, ring = _result(printed, "--config demo out_dir=runs/mine"), _result(printed, "out_dir=runs/ring")
    pre, rnd = _result(printed, "linear backbone=runs/mine"), _result(printed, "linear backbone=random:runs/mine")
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_report.py"), str(work / "runs" / "mine")],
                            capture_output=True, text=True, check=True).stdout
    assert f"{pre['top1']:5.1f}%" in report and f"{rnd['top1']:5.1f}%" in report, report  # make demo prints them
    expected = [
        f"| pretrained by `make demo` | {pre['top1']:.1f}% |",  # Results: the demo
        f"| the same encoder at its initial weights | {rnd['top1']:.1f}% |",
        f"table's {pre['top1']:.1f}% and {rnd['top1']:.1f}%",  # the tour's own paragraph
        f"online kNN {ring['online_knn_top1']:.1f}%, against {demo['online_knn_top1']:.1f}%",
        f"certifies {ring['mi']:.2f} nats",
        # the distillation's teacher is the demo's encoder
        f"| teacher (demo encoder, quarter-width ResNet-18) | {demo['steps']} | {demo['mi']:.2f} / "
        f"{demo['mi_ceiling']:.2f} | {pre['top1']:.1f} |",
    ]
    missing = [line for line in expected if line not in README]
    assert not missing, f"README.md does not state what the tour printed: {missing}"


@pytest.mark.slow
def test_every_tour_command_runs_as_written(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the Data section's files are not here ({SHARED_DATA}), and this test downloads nothing")
    work = tmp_path / "work"
    work.mkdir()
    _link_the_data(work)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    printed, seconds = {}, {}
    for command, comment in tour():
        argv, name = argv_of(command)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        took = time.monotonic() - start
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        if CLUSTER not in comment:
            assert took < SLOWEST, f"{command} took {took:.0f} s on this machine"
            seconds[command] = round(took, 1)
        result = re.search(r"^\{.*", proc.stdout, re.S | re.M)  # the result: the JSON a command ends with
        if name in ("pretrain", "linear") and result:
            printed[command] = json.loads(result.group(0))
    print(json.dumps(seconds, indent=1), f"\nin all {sum(seconds.values()):.0f} s")
    assert (work / "runs" / "mine" / "linear" / "linear.json").is_file()  # the two probes did not overwrite
    assert (work / "runs" / "mine" / "linear_random" / "linear.json").is_file()  # each other
    export = work / "runs" / "mine" / "export"  # the evaluators wrote beside the export, not into it
    assert sorted(p.name for p in export.iterdir() if not p.name.startswith(".")) == ["config.json",
                                                                                      "model.safetensors"]
    assert (work / "runs" / "mine" / "export_detect" / "detect.json").is_file()
    assert (work / "runs" / "mine" / "export_segment" / "segment.json").is_file()
    _figures_match_the_readme(work, printed)
