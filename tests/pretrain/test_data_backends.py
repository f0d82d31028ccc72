"""Pretraining reads the same batches from every loader backend: the same weights, the same exact resume."""
from __future__ import annotations

import shutil

import pytest
import torch

from infoview.cli import main

pytestmark = pytest.mark.slow


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_the_resident_split_trains_the_same_weights_and_resumes_mid_epoch_exactly(tiny, tmp_path):
    def run(out, backend, *extra):
        assert main(["pretrain", *tiny, f"out_dir={out}", f"data.backend={backend}", "train.max_steps=12",
                     "train.ckpt_every_steps=8", *extra]) == 0
        return out / "checkpoints"

    resident = run(tmp_path / "resident", "resident")
    reference = run(tmp_path / "pytorch", "pytorch")
    want = _weights(reference / "last.pt")
    assert all(torch.equal(_weights(resident / "last.pt")[k], want[k]) for k in want)
    # from step 8 of 89 in the epoch, in a new loader: the same last 4 batches, the same weights
    start = tmp_path / "from_step_8.pt"
    shutil.copy(resident / "prev.pt", start)
    assert torch.load(start, weights_only=True)["step"] == 8
    resumed = run(tmp_path / "resumed", "resident", f"train.resume={start}")
    got = _weights(resumed / "last.pt")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_checkpoint_from_before_the_speed_keys_resumes(tiny, tmp_path):
    """data.decode, data.resident_cap_gb and optim.fused say how a run goes, not what it trains."""
    out = tmp_path / "run"
    assert main(["pretrain", *tiny, f"out_dir={out}", "train.max_steps=2"]) == 0
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    for section, key in (("data", "decode"), ("data", "resident_cap_gb"), ("optim", "fused"), ("train", "compile_mode")):
        del state["config"][section][key]
    torch.save(state, last)
    assert main(["pretrain", *tiny, f"out_dir={out}", "train.max_steps=3", "data.backend=resident"]) == 0
    assert torch.load(last, weights_only=True)["step"] == 3


def test_compile_takes_torch_compiles_modes(tiny, tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    assert main(["pretrain", *tiny, f"out_dir={tmp_path / 'a'}", "train.max_steps=1", "train.compile=true"]) == 0
    assert main(["pretrain", *tiny, f"out_dir={tmp_path / 'b'}", "train.max_steps=1", "train.compile=true",
                 "train.compile_mode=reduce-overhead"]) == 0
    assert seen == ["default", "reduce-overhead"]
    capsys.readouterr()
    assert main(["pretrain", *tiny, f"out_dir={tmp_path / 'c'}", "train.compile_mode=fast"]) == 2
    err = capsys.readouterr().err
    assert "train.compile_mode must be one of default, reduce-overhead, max-autotune" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("args, says", [
    (["train.device=cuda"], "device=cuda but no CUDA device is visible"),
    (["data.backend=resident", "data.resident_cap_gb=0.000001"], "above the cap of 1,000 bytes"),
    (["data.decode=device"], "digits holds decoded arrays"),
])
def test_what_cannot_run_here_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, args, says):
    if "cuda" in args[0] and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "run"
    assert main(["pretrain", *tiny, f"out_dir={out}", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not out.exists()
