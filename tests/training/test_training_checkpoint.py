"""Checkpoint files: atomic, weights_only, clear errors when damaged."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from infoview.errors import InfoviewError
from infoview.training.checkpoint import (
    find_resume, load_checkpoint, remove_stale_temps, rng_state, save_checkpoint, set_rng_state,
)


def state(step: int = 0, **more) -> dict:
    """What every checkpoint holds (the engine adds the optimizer, RNG states and the rest)."""
    return {"config": {}, "model": {}, "step": step, **more}


def test_round_trip_keeps_the_previous_file_and_loads_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1, w=torch.ones(3)), path)
    save_checkpoint(state(2, w=torch.zeros(3)), path)
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(tmp_path / "prev.pt")["step"] == 1
    assert torch.load(path, weights_only=True)["w"].sum() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]  # no temp files left


def test_damaged_files_are_errors_that_name_them(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2, w=torch.randn(1000)), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InfoviewError, match=r"last.pt is truncated or corrupt.*prev.pt"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(InfoviewError, match="is empty"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(InfoviewError, match="not an infoview pretraining checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InfoviewError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_falls_back_to_prev_when_last_is_missing_and_stale_temps_go(tmp_path):
    assert find_resume(tmp_path) is None
    save_checkpoint(state(1), tmp_path / "last.pt")
    save_checkpoint(state(2), tmp_path / "last.pt")
    (tmp_path / "last.pt").unlink()  # killed between the two renames
    assert find_resume(tmp_path).name == "prev.pt"
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    remove_stale_temps(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    save_checkpoint(state(rng=rng_state()), tmp_path / "last.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_an_unsafe_pickle_is_refused_as_unsafe_and_no_one_is_told_to_unpickle_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "infoview-pretrain-1", "model": Payload()}, path)
    with pytest.raises(InfoviewError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "refused to load" in msg and "can run any code" in msg
    assert "weights_only=False" not in msg and "corrupt" not in msg


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InfoviewError, match="notes.txt is not a checkpoint or an export: .* starts with b'hell'"):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 cut short")  # a torch file's start, and then nothing that reads
    with pytest.raises(InfoviewError, match="notes.txt is truncated or corrupt, or not a checkpoint"):
        load_checkpoint(path)
    torch.save({"format": "infoview-pretrain-1", **state(4)}, path,
               _use_new_zipfile_serialization=False)  # torch's legacy format still loads
    assert load_checkpoint(path)["step"] == 4


def test_a_text_file_as_backbone_is_said_to_be_no_checkpoint_not_an_unsafe_pickle(capsys):
    from pathlib import Path

    from infoview.cli import main

    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert main(["knn", f"backbone={readme}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"infoview knn: error: {readme} is not a checkpoint or an export") and "run any code" not in err


def test_a_forged_checkpoint_that_lacks_its_config_is_a_clear_error(tmp_path):
    path = tmp_path / "forged.pt"
    torch.save({"format": "infoview-pretrain-1", "model": {}, "step": 3}, path)
    with pytest.raises(InfoviewError, match="lacks 'config'"):
        load_checkpoint(path)
