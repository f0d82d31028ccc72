"""A real one-node SLURM cluster for the launch tests (scripts/slurm-local.sh), or a skip that says why."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
PID_FILES = ("slurmd.pid", "slurmctld.pid", "munge/munged.pid")

TINY = ["data.source=digits", "data.batch_size=16", "data.num_workers=0", "augment.size=16", "model.arch=resnet18",
        "model.cifar_stem=true", "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.warmup_epochs=0", "train.progress=false", "train.eval_every=0", "train.threads=1"]


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Starts munged, slurmctld and slurmd for the session; stops them by pid, whatever happens."""
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"SLURM binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge (see README)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs slurmd as root; run the tests as root (CI does)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": str(_free_port_pair())}
    conf = folder / "slurm.conf"
    old = os.environ.get("SLURM_CONF")
    try:
        proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"slurm-local.sh start failed:\n{proc.stdout}\n{proc.stderr}"
        os.environ["SLURM_CONF"] = str(conf)
        yield folder
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
        for name in PID_FILES:  # in case the script could not
            pid_file = folder / name
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def tiny():
    return list(TINY)
