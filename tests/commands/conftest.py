"""Real SLURM clusters for the launch tests (scripts/slurm-local.sh): one node, or two on this machine; or a
skip that says why. Also the helpers the launch tests share (the ``slurm_jobs`` fixture)."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from infoview.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")

TINY = ["data.source=digits", "data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.arch=resnet18",
        "model.cifar_stem=true", "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.warmup_epochs=0", "train.progress=false", "train.eval_every=0", "train.threads=1"]


def _free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free (slurmctld, then one slurmd per node)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count > 65000:
            continue
        try:
            for other in range(port + 1, port + count):
                with socket.socket() as s2:
                    s2.bind(("127.0.0.1", other))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {count} free ports in a row")


def _kill_by_pid_files(folder: Path) -> None:
    """SIGKILL what the pid files name, in case the script could not stop it."""
    for pid_file in [*folder.glob("slurmd-*.pid"), folder / "slurmctld.pid", folder / "munge" / "munged.pid"]:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


#: held while a local cluster runs: under pytest-xdist (make test) the two workers' SLURM modules would
#: otherwise start two clusters at once, which share this machine's host name and collide on ports
_CLUSTER_LOCK = Path(tempfile.gettempdir()) / f"infoview-tests-slurm-{os.geteuid()}.lock"


@contextlib.contextmanager
def _one_cluster_at_a_time():
    with open(_CLUSTER_LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


@contextlib.contextmanager
def _cluster(tmp_path_factory, nodes: int):
    """munged, slurmctld and one slurmd per node, with SLURM_CONF pointing at them; stopped by pid, whatever happens.

    Jobs inherit this process's environment (sbatch and srun export it), so PYTHONPATH is made to start with
    this checkout: the tasks import the code under test, whichever copy of infoview the venv installed."""
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"SLURM binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge (see README)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs slurmd as root; run the tests as root (CI does)")
    with _one_cluster_at_a_time():
        folder = tmp_path_factory.mktemp(f"slurm{nodes}")
        env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": str(_free_ports(nodes + 1)),
               "SLURM_LOCAL_NODES": str(nodes)}
        old = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
        try:
            proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"slurm-local.sh start failed:\n{proc.stdout}\n{proc.stderr}"
            os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old["PYTHONPATH"]) if p)
            yield folder
        finally:
            subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
            _kill_by_pid_files(folder)
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node cluster (this host's name) for the module's tests."""
    with _cluster(tmp_path_factory, 1) as folder:
        yield folder


@pytest.fixture(scope="module")
def slurm_cluster_2(tmp_path_factory):
    """Two nodes on this machine, 127.0.0.1 and 127.0.0.2, each its own slurmd (see scripts/slurm-local.sh)."""
    with _cluster(tmp_path_factory, 2) as folder:
        yield folder


@pytest.fixture
def tiny():
    return list(TINY)


# ----------------------------------------------------------------------------- helpers of the launch tests
def launch(args: list[str], capsys) -> dict:
    """``infoview launch ARGS`` in this process: its JSON report (the command must succeed)."""
    assert main(["launch", *args]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def wait_for_state(job_id: str, state: str, timeout: float, on_requeued=None) -> dict[str, str]:
    """Poll until the job reaches ``state``. SLURM holds a requeued job for two minutes before it may start
    again; the test releases it at once (scontrol update StartTime=now) so as not to wait for nothing.
    ``on_requeued(job_id)`` runs first, each time the job waits after a requeue."""
    deadline = time.time() + timeout
    fields: dict[str, str] = {}
    while time.time() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") == state:
            return fields
        if fields.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        if fields.get("JobState") == "PENDING" and int(fields.get("Restarts", "0")) > 0:
            if on_requeued is not None:
                on_requeued(job_id)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=60)
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {state}: {fields.get('JobState')} ({fields.get('Reason')})")


def requeue(job_id: str, timeout: float = 60) -> None:
    """``scontrol requeue`` the job, and wait until SLURM has taken it back (an ended job does not at once).

    An ended job is requeued once its nodes are idle and a second has passed: slurmd refuses a job whose
    credential is no newer, to the second, than its revocation at the end of the last run ("Job credential
    revoked"), which SLURM's own two-minute hold avoids and :func:`wait_for_state`'s release would not."""
    fields = job_fields(job_id)
    restarts = int(fields.get("Restarts", "0"))
    if fields.get("JobState") not in ("RUNNING", "PENDING"):
        wait_until_idle()
        time.sleep(1.5)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, timeout=60)
    deadline = time.time() + timeout
    while int(job_fields(job_id).get("Restarts", "0")) <= restarts:
        if time.time() > deadline:
            raise AssertionError(f"job {job_id} was not requeued within {timeout:.0f} s")
        time.sleep(0.2)


def wait_until_idle(timeout: float = 180) -> None:
    """No job left and the nodes idle: a job whose step must wait for the last job's clean-up ("completing")
    would still be counting down its time limit, and its signal could reach a task that has not started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=60).stdout.strip()
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                               timeout=60).stdout.split()
        if not queue and nodes and all(n == "idle" for n in nodes):
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not come idle: queue {queue!r}, nodes {nodes}")


def wait_for_checkpoint(path: Path, step: int, timeout: float = 180) -> int:
    """Wait until ``path`` holds a checkpoint at ``step`` or later; its step."""
    import torch

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            saved = int(torch.load(path, weights_only=True)["step"])
            if saved >= step:
                return saved
        except (FileNotFoundError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} or later in {path} after {timeout:.0f} s")


def steps_logged(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r["loss"]]


def task_starts(job_folder: Path, job_id: str) -> dict[int, list[int]]:
    """{rank: [the node index it started on, once per run]}, from submitit's line in each task's log."""
    starts: dict[int, list[int]] = {}
    for log in sorted(job_folder.glob(f"{job_id}_*_log.out")):
        for node, rank in re.findall(r"Starting with JobEnvironment\(.*?node=(\d+)\(\d+\), global_rank=(\d+)\(",
                                     log.read_text()):
            starts.setdefault(int(rank), []).append(int(node))
    return starts


def common(tmp_path: Path, tiny: list[str]) -> list[str]:
    return [*tiny, f"out_dir={tmp_path / 'run'}", f"launch.folder={tmp_path / 'launch'}", "launch.partition=debug"]


@pytest.fixture
def slurm_jobs():
    """The helpers above: launch, job_fields, wait_for_state, requeue, wait_until_idle, wait_for_checkpoint,
    steps_logged, task_starts, common."""
    return SimpleNamespace(launch=launch, job_fields=job_fields, wait_for_state=wait_for_state, requeue=requeue,
                           wait_until_idle=wait_until_idle, wait_for_checkpoint=wait_for_checkpoint,
                           steps_logged=steps_logged, task_starts=task_starts, common=common)
