"""Setting up torch.distributed from the environment: what is checked before the process group is made."""
from __future__ import annotations

import time

import pytest

from infoview.errors import InfoviewError
from infoview.training import distributed as D


def test_an_unresolvable_rendezvous_host_is_an_error_at_once_not_a_hang(monkeypatch):
    # torch would retry it until the process group's timeout (30 minutes); a node list whose first name the
    # other nodes cannot resolve is a cluster's DNS problem, said in one line
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "node-17.invalid", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    start = time.time()
    with pytest.raises(InfoviewError, match=r"MASTER_ADDR=node-17\.invalid does not resolve") as info:
        D.setup("cpu")
    assert time.time() - start < 30 and "\n" not in str(info.value)
    assert not D.is_distributed()


def test_the_collectives_timeout_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.delenv(D.TIMEOUT_ENV, raising=False)
    assert D.timeout_minutes() == 30.0
    monkeypatch.setenv(D.TIMEOUT_ENV, "5")
    assert D.timeout_minutes() == 5.0
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(D.TIMEOUT_ENV, bad)
        with pytest.raises(InfoviewError, match=f"INFOVIEW_DIST_TIMEOUT_MIN='{bad}': expected a number of minutes"):
            D.timeout_minutes()
