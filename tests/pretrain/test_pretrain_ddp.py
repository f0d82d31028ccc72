"""Distributed correctness on CPU (gloo): the gradient through the cross-rank gather,
and a two-process `infoview pretrain` under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from infoview.objectives import available, build
from infoview.training import distributed as D

pytestmark = pytest.mark.slow

BATCH, WORLD = 8, 2
OBJECTIVES = {
    "infonce": {}, "ml_cpc": {"alpha": 0.5}, "ring": {"outer": 0.5, "inner": 0.1}, "hard_negative": {},
    "debiased": {}, "nwj": {}, "js": {},
}


def make_method(objective: str):
    """SimCLR on a one-block ViT: no BatchNorm, whose per-rank statistics would differ by design."""
    from infoview.models import build_encoder, projector
    from infoview.pretrain.methods import SimCLR

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    proj = projector(enc.feature_dim, 32, 16, num_layers=2, bn=False)
    return SimCLR(enc, proj, build(objective, **OBJECTIVES[objective]), num_classes=0, temperature=0.5)


def grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def _naive_gather(x):
    """The common bug: other ranks' embeddings arrive without a gradient path."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _on_rank(rank: int, views_file: str) -> dict:
    views = torch.load(views_file)
    b = BATCH // WORLD
    mine = [v[rank * b : (rank + 1) * b] for v in views]
    results = {}
    real = D.gather_with_grad
    for name in [*OBJECTIVES, "infonce_naive"]:
        method = make_method(name.replace("_naive", ""))
        ddp = torch.nn.parallel.DistributedDataParallel(method)
        gathered = []

        def recording(x, gathered=gathered):
            gathered.append(tuple(x.shape))
            return real(x)

        D.gather_with_grad = _naive_gather if name.endswith("_naive") else recording
        try:
            out = ddp(mine)
            out.loss.backward()
        finally:
            D.gather_with_grad = real
        results[name] = grads(method)
        results[name + ":figures"] = [out.mi.item(), out.ceiling, out.mi_estimate.item()]
        results[name + ":gathered"] = gathered
    # MoCo's shuffled BN: each rank gets a random slice of the global batch, and unshuffling undoes it
    x = torch.arange(b * 3, dtype=torch.float32).view(b, 3) + 100 * rank
    shuffled, undo = D.shuffle_across_ranks(x)
    results["shuffle"] = [D.gather_no_grad(shuffled), torch.equal(D.unshuffle_across_ranks(shuffled, undo), x)]
    return results


def test_two_ranks_give_the_single_process_gradient_for_every_objective(tmp_path, gloo_ranks):
    assert set(OBJECTIVES) == set(available())
    torch.manual_seed(1)
    views = [torch.randn(BATCH, 3, 16, 16) for _ in range(2)]
    torch.save(views, tmp_path / "views.pt")
    ddp = gloo_ranks(_on_rank, str(tmp_path / "views.pt"), world=WORLD)[0]
    for name in OBJECTIVES:
        method = make_method(name)
        out = method(views)  # one process, the whole batch
        out.loss.backward()
        ref = grads(method)
        assert ref.keys() == ddp[name].keys()
        for key, g in ref.items():
            torch.testing.assert_close(ddp[name][key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
        # the certified bound (on the global cross-view matrix) and its ceiling are the single process's
        mi, ceiling, estimate = ddp[name + ":figures"]
        assert mi == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6) and ceiling == out.ceiling, name
        if build(name, **OBJECTIVES[name]).pooled:  # the global value, on each rank
            assert estimate == pytest.approx(out.mi_estimate.item(), rel=1e-5, abs=1e-6), name
    # rank 0 gathered the views' embeddings, and for ML-CPC only two numbers per row, not its (N, K) negatives
    b, dim = BATCH // WORLD, 16
    assert ddp["infonce:gathered"] == [(b, 2, dim)]
    assert ddp["ml_cpc:gathered"] == [(b, 2, dim), (2 * b,), (2 * b,)]
    everything, round_trip = ddp["shuffle"]
    expected = torch.cat([torch.arange(12.0).view(4, 3) + 100 * r for r in range(WORLD)])
    assert round_trip and not torch.equal(everything, expected)
    assert torch.equal(everything[everything[:, 0].argsort()], expected)  # a permutation of the rows
    # the test would catch the bug: without the gradient through the gather, they differ
    method = make_method("infonce")
    method(views).loss.backward()
    ref = grads(method)
    assert any(not torch.allclose(ddp["infonce_naive"][k], ref[k], rtol=1e-3, atol=1e-5) for k in ref)


def torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "infoview.cli",
         "pretrain", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


def test_torchrun_two_processes_train_with_the_global_batch_rule(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = [*tiny, "train.max_steps=3", "train.ckpt_every_steps=2", "objective.name=ml_cpc", "optim.lr=0.4",
              "optim.ref_batch=8", "optim.lr_scaling=sqrt"]
    two = tmp_path / "two"
    # with the online monitors at the end: rank 0 evaluates while the other rank waits (a barrier that only
    # rank 0 reached once hung every DDP run that evaluated)
    proc = torchrun([*common, "train.eval_every=1", f"out_dir={two}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"world_size": 2') == 1  # one rank reports
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "infoview.cli", "pretrain", *common, f"out_dir={one}"], check=True,
                   capture_output=True, env=env, timeout=600)
    r2, r1 = (json.loads((p / "pretrain.json").read_text()) for p in (two, one))
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert 0 <= r2["online_knn_top1"] <= 100 and "online_knn_top1" not in r1
    # same global batch -> same learning rate (sqrt(16 / 8) * 0.4) and the same candidates per row
    assert r2["global_batch"] == r1["global_batch"] == 16
    assert r2["peak_lr"] == r1["peak_lr"] == pytest.approx(0.4 * 2**0.5)
    assert r2["mi_ceiling"] == r1["mi_ceiling"]  # certified on the same 16 x 16 matrix
    state = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2  # each rank's RNG saved
    assert not list(Path(two).glob("checkpoints/.*.tmp"))


def test_torchrun_moco_with_shuffled_bn_and_a_shared_queue(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = torchrun([*tiny, "method=moco", "moco.queue_size=64", "moco.bn=shuffle", "train.max_steps=2", f"out_dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert int(model["queue.ptr"]) == 2 * 16 % 64  # the keys of the global batch, each step
