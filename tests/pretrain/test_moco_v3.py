"""MoCo v3: symmetric queries with a predictor against the momentum keys of the global batch, no queue;
its keys, training, EMA, frozen patch projection, certified bound, DDP gradient and resume."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal

import pytest
import torch
from torch import nn

from infoview.cli import main
from infoview.errors import ConfigError
from infoview.models import MLP, build_encoder, projector
from infoview.objectives import build, cross_view_pairs
from infoview.pretrain.methods import get_method
from infoview.training.optim import build_optimizer

MoCoV3 = get_method("moco_v3")
T = 0.5
OBJECTIVES = {"infonce": {}, "ml_cpc": {"alpha": 0.5}}  # a per-row objective and a pooled one


def small_vit():
    """A one-block ViT on 16 px: no BatchNorm, so one process and two ranks see the same embeddings."""
    torch.manual_seed(0)
    return build_encoder("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)


def make(objective: str = "infonce", encoder=None, **kw):
    enc = encoder if encoder is not None else small_vit()
    proj = projector(enc.feature_dim, 32, 16, num_layers=2, bn=False)
    pred = MLP(16, 32, 16, num_layers=2, bn=False)
    return MoCoV3(enc, proj, build(objective, **OBJECTIVES[objective]), predictor=pred, temperature=T, **kw)


def views(b: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)]


def queries_and_keys(m, x):
    with torch.no_grad():
        q1, q2 = (m.predictor(m.projector(m.encoder(v))) for v in x)
        k1, k2 = (m.key(v) for v in x)  # the key encoder after the step's update
    return q1, q2, k1, k2


def grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def read_losses(out) -> list[float]:
    with open(out / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


# ---- keys ------------------------------------------------------------------------------------------


def test_it_is_listed_with_its_keys_and_defaults(capsys):
    assert main(["list", "methods"]) == 0
    assert "moco_v3" in [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert main(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    section = re.search(r"\n  moco_v3:\n((?:    .*\n)+)", text).group(1)
    defaults = {line.split(":")[0].strip(): line.split(":", 1)[1].split("#")[0].strip()
                for line in section.splitlines()}
    assert defaults == {"temperature": "0.2", "momentum": "0.99", "momentum_final": "1.0", "pred_hidden": "4096",
                        "pred_layers": "2", "pred_last_bn": "false", "scale_loss": "true",
                        "freeze_patch_embed": "null"}


@pytest.mark.parametrize("override,message", [
    (["moco.pred_hidden=8"], "moco.pred_hidden=8 configures method=moco, and this run is method=moco_v3"),
    (["moco_v3.momentum=0.9", "moco_v3.momentum_final=0.5"], "moco_v3.momentum_final=0.5 must be in"),
    (["moco_v3.freeze_patch_embed=true"], "moco_v3.freeze_patch_embed=true freezes a ViT's patch projection"),
    (["moco_v3.temperature=0"], "moco_v3.temperature"),
])
def test_bad_settings_are_one_line_errors(tiny, tmp_path, capsys, override, message):
    assert main(["pretrain", *tiny, "method=moco_v3", *override, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "checkpoints").exists()
    assert main(["pretrain", *tiny, "moco_v3.momentum=0.9", f"out_dir={tmp_path}"]) == 2  # under method=simclr
    assert "configures method=moco_v3" in capsys.readouterr().err


# ---- training ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_it_trains_on_cpu_and_its_loss_falls(tiny, tmp_path, capsys):
    # easy views (crops of 60-100 %, no colour) and a key encoder that follows closely: 30 steps learn
    args = [*tiny, "method=moco_v3", "moco_v3.pred_hidden=32", "moco_v3.momentum=0.9", "optim.name=sgd",
            "optim.lr=0.5", "augment.overrides.crop.scale=[0.6,1.0]", "augment.overrides.jitter.p=0",
            "augment.overrides.grayscale.p=0", "train.max_steps=30", "train.log_every=1", f"out_dir={tmp_path}"]
    assert main(["pretrain", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    losses = read_losses(tmp_path)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, losses
    # certified on the batch's 16 x 16 query-key matrix
    assert result["mi_ceiling"] == pytest.approx(math.log(16)) and result["mi"] <= result["mi_ceiling"]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(k.startswith("key.module.") for k in state) and any(k.startswith("predictor.") for k in state)
    assert not any(k.startswith("queue.") for k in state)  # no queue
    assert not any(k.startswith("key.module.2") for k in state)  # keys have no predictor: encoder, projector


def test_the_loss_uses_both_orders_and_the_bound_is_on_the_cross_view_matrix():
    m = make()
    x = views()
    out = m(x)
    q1, q2, k1, k2 = queries_and_keys(m, x)
    obj = build("infonce")
    one, two = (obj(*cross_view_pairs(q, k, T)).loss for q, k in ((q1, k2), (q2, k1)))
    torch.testing.assert_close(out.ssl_loss, 4 * T * (one + two) / 2)  # the reference's 2T CE, both ways
    assert not torch.allclose(out.ssl_loss, 4 * T * one)
    torch.testing.assert_close(m(x[::-1]).ssl_loss, out.ssl_loss)  # symmetric in the views
    unscaled = make(scale_loss=False)(x)
    torch.testing.assert_close(unscaled.ssl_loss, (one + two) / 2)
    # mi: the objective's bound on q1 against the keys of the second views, 16 candidates
    ref = obj.bound(*cross_view_pairs(q1, k2, T))
    torch.testing.assert_close(out.mi, ref.mi)
    assert out.ceiling == pytest.approx(math.log(16)) and out.mi <= out.ceiling


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_sees_rows_of_one_positive_and_the_other_keys(objective):
    out = make(objective)(views())
    assert torch.isfinite(out.loss) and out.mi <= out.ceiling
    out.loss.backward()


def test_the_key_encoder_gets_no_gradient_and_follows_the_ema():
    m = make(momentum=0.9, momentum_final=1.0)
    for step, expected in ((0, 0.9), (5, 0.95), (10, 1.0)):
        m.set_progress(step, 10, step / 10)
        assert m.momentum == pytest.approx(expected)  # cosine from 0.9 to 1
    m.set_progress(0, 10, 0.0)
    m(views()).loss.backward()
    assert not any(p.requires_grad or p.grad is not None for p in m.key.parameters())
    assert grads(m) and not any(n.startswith("key.") for n in grads(m))
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()  # the online weights move
    before = [p.clone() for p in m.key.parameters()]
    online = [p.detach().clone() for p in nn.Sequential(m.encoder, m.projector).parameters()]
    m.set_progress(3, 10, 0.3)
    mom = m.momentum
    m(views(seed=2))
    moved = 0
    for b, o, a in zip(before, online, m.key.parameters()):
        torch.testing.assert_close(a, mom * b + (1 - mom) * o)
        moved += not torch.equal(a, b)
    assert moved > 0


def test_the_patch_projection_stays_frozen_and_outside_the_optimiser():
    m = make()
    patch = list(m.encoder.backbone.patch_embed.parameters())
    assert m.frozen and patch and not any(p.requires_grad for p in patch)
    opt = build_optimizer("adamw", m, 1e-2, weight_decay=0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in patch}
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    for seed in (1, 2):
        opt.zero_grad()
        m(views(seed=seed)).loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        if n.startswith("encoder.") and "patch_embed" in n:
            assert torch.equal(p, start[n]), n  # neither trained nor decayed
        elif "patch_embed" in n:  # the key encoder's: an EMA of that constant (equal but for rounding)
            torch.testing.assert_close(p, start[n], rtol=0, atol=1e-6)
    qkv = "encoder.backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(dict(m.named_parameters())[qkv], start[qkv])
    assert not make(freeze_patch_embed=False).frozen
    resnet = build_encoder("resnet18", cifar_stem=True, img_size=16, channels=[8, 8, 16, 16])
    assert not make(encoder=resnet).frozen  # null: only an encoder with a patch projection
    with pytest.raises(ConfigError, match="moco_v3.freeze_patch_embed=true freezes"):
        make(encoder=resnet, freeze_patch_embed=True)


@pytest.mark.slow
def test_a_vit_run_keeps_its_random_patch_projection(tiny, tmp_path, capsys):
    from infoview.backbones.encoder import encoder_from_checkpoint

    vit = ["model.arch=vit_tiny_patch16_224", "model.kwargs.depth=1",
           "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "model.kwargs.patch_size=8"]
    tiny = [a for a in tiny if not a.startswith(("model.arch=", "model.cifar_stem=", "model.kwargs."))]
    args = [*tiny, *vit, "method=moco_v3", "moco_v3.pred_hidden=32", "optim.name=adamw", "optim.lr=0.01",
            "optim.weight_decay=0.1", "train.max_steps=3", f"out_dir={tmp_path}"]
    assert main(["pretrain", *args]) == 0
    capsys.readouterr()
    start, _ = encoder_from_checkpoint(tmp_path / "checkpoints" / "last.pt", trained=False)  # the weights the run began with
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, p in start.backbone.named_parameters():
        if name.startswith("patch_embed."):
            assert torch.equal(state[f"encoder.backbone.{name}"], p), name
            torch.testing.assert_close(state[f"key.module.0.backbone.{name}"], p, rtol=0, atol=1e-6)
    assert not torch.equal(state["encoder.backbone.blocks.0.mlp.fc1.weight"], start.backbone.blocks[0].mlp.fc1.weight)


# ---- DDP -------------------------------------------------------------------------------------------

BATCH, WORLD = 8, 2


def _on_rank(rank: int, views_file: str) -> dict:
    x = torch.load(views_file)
    b = BATCH // WORLD
    mine = [v[rank * b:(rank + 1) * b] for v in x]
    results = {}
    for name in OBJECTIVES:
        method = make(name)
        ddp = torch.nn.parallel.DistributedDataParallel(method)
        out = ddp(mine)
        out.loss.backward()
        results[name] = grads(method)
        results[name + ":figures"] = [out.mi.item(), out.ceiling, out.ssl_loss.item()]
    return results


@pytest.mark.slow
def test_two_ranks_give_the_single_process_gradient(tmp_path, gloo_ranks):
    torch.manual_seed(1)
    x = [torch.randn(BATCH, 3, 16, 16) for _ in range(2)]
    torch.save(x, tmp_path / "views.pt")
    ddp = gloo_ranks(_on_rank, str(tmp_path / "views.pt"), world=WORLD)[0]
    for name in OBJECTIVES:
        method = make(name)
        out = method(x)  # one process, the whole batch
        out.loss.backward()
        ref = grads(method)
        assert ref.keys() == ddp[name].keys() and not any("patch_embed" in k or k.startswith("key.") for k in ref)
        for key, g in ref.items():
            torch.testing.assert_close(ddp[name][key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
        mi, ceiling, loss = ddp[name + ":figures"]  # certified on the global 8 x 8 matrix, on rank 0
        assert mi == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6) and ceiling == out.ceiling, name
        if build(name, **OBJECTIVES[name]).pooled:  # ML-CPC's loss is the global batch's on each rank
            assert loss == pytest.approx(out.ssl_loss.item(), rel=1e-5, abs=1e-6)


# ---- resume ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stopped_and_resumed_run_ends_with_the_same_weights(tiny, tmp_path, monkeypatch, capsys):
    """Stopped (Ctrl-C) after a few steps and resumed, a run ends where an uninterrupted one does: the key
    encoder and the momentum schedule included."""
    args = [*tiny, "method=moco_v3", "moco_v3.pred_hidden=32", "train.max_steps=6", "train.log_every=1"]
    assert main(["pretrain", *args, f"out_dir={tmp_path / 'ref'}"]) == 0

    real = MoCoV3.set_progress

    def interrupt_at_step_2(self, step, total_steps, epoch):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the loop finishes the next step, saves and stops
        real(self, step, total_steps, epoch)

    monkeypatch.setattr(MoCoV3, "set_progress", interrupt_at_step_2)
    assert main(["pretrain", *args, f"out_dir={tmp_path / 'run'}"]) == 130
    stopped = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 2 < stopped < 6
    monkeypatch.setattr(MoCoV3, "set_progress", real)
    assert main(["pretrain", *args, f"out_dir={tmp_path / 'run'}"]) == 0
    capsys.readouterr()
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in ("ref", "run"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
