"""method=la, Local Aggregation: its k-means, its neighbour sets and loss, its epochs, resume and DDP."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoview.cli import main
from infoview.objectives import bank_bound, build
from infoview.pretrain.methods import la as la_module
from infoview.pretrain.methods.la import EPS, LocalAggregation, kmeans, la_loss, neighbours

DIGITS_TRAIN = 1437  # images in digits' train split: 11 steps of 128


class _Given(nn.Identity):
    """Encoder and head that pass the embeddings through: the method's own arithmetic is tested."""

    def __init__(self, dim: int):
        super().__init__()
        self.feature_dim = self.out_dim = dim


def given_la(n: int = 32, dim: int = 8, **kw) -> LocalAggregation:
    kw = {"background_k": 8, "num_kmeans": 2, "k": 4, "kmeans_iters": 5, **kw}
    return LocalAggregation(_Given(dim), _Given(dim), build("infonce"), 0, n, **kw)


def pretrain_la(args: list[str]) -> int:
    return main(["pretrain", *args])


LA_RUN = ["method=la", "augment.num_views=1", "data.batch_size=128", "la.background_k=256", "la.k=20",
          "la.num_kmeans=2", "la.kmeans_iters=5", "optim.lr=0.1", "train.log_every=1"]


def test_kmeans_finds_planted_clusters_and_is_deterministic(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=gen), dim=1) * 5
    planted = torch.arange(4).repeat_interleave(30)
    x = centres[planted] + 0.1 * torch.randn(120, 16, generator=gen)
    seed = 5
    init = torch.randperm(120, generator=torch.Generator().manual_seed(seed))[:4]
    assert sorted(planted[init].tolist()) == [0, 1, 2, 3]  # the seeded init has a row in every blob
    labels = kmeans(x, 4, 5, seed)
    assert torch.equal(labels[:, None] == labels[None], planted[:, None] == planted[None])  # the same partition
    assert torch.equal(kmeans(x, 4, 5, seed), labels)
    monkeypatch.setattr(la_module, "KMEANS_BLOCK", 4 * 7)  # 7 rows a block: the same labels
    assert torch.equal(kmeans(x, 4, 5, seed), labels)
    other = kmeans(x, 9, 5, seed)  # more clusters than blobs: none spans two
    for c in other.unique():
        assert planted[other == c].unique().numel() == 1


def test_neighbour_sets_on_a_hand_made_bank():
    angles = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0, 2.0, 3.0])
    bank = torch.stack([angles.cos(), angles.sin()], 1)  # 7 rows on the unit circle
    v = torch.tensor([[1.0, 0.0]])  # nearest rows: 0, 1, 2, 3, 4, ...
    labels = torch.tensor([[0, 0, 1, 1, 0, 2, 2],  # clustering 1: image 0 with 1 and 4
                           [0, 1, 1, 0, 2, 2, 3]])  # clustering 2: image 0 with 3
    scores, rows, close = neighbours(v @ bank.T / 0.07, labels, torch.tensor([0]), background_k=5)
    assert rows.tolist() == [[0, 1, 2, 3, 4]]
    assert close.tolist() == [[True, True, False, True, True]]  # C_0 = {0, 1, 3, 4}: a union over clusterings
    scores, rows, close = neighbours(v @ bank.T / 0.07, labels, torch.tensor([0]), background_k=5, skip=2)
    assert rows.tolist() == [[2, 3, 4]] and close.tolist() == [[False, True, True]]  # the ring: ranks 2 .. 4
    assert torch.allclose(scores, (v @ bank[[2, 3, 4]].T) / 0.07)


def test_loss_is_the_formula_and_mi_is_the_bank_bound():
    torch.manual_seed(0)
    n, dim, b = 40, 8, 6
    la = given_la(n, dim, background_k=10, kmeans_start_epoch=0, temperature=0.1)
    la.set_progress(0, 10, 0.0)  # clusters the random initial bank
    z = torch.randn(b, dim, requires_grad=True)
    idx = torch.tensor([3, 7, 11, 20, 31, 39])
    bank = la.bank.bank.clone()
    out = la([z], None, idx)
    v = F.normalize(z.detach(), dim=1)
    expected = []
    for r in range(b):
        s = (v[r] @ bank.T / 0.1).double()
        background = s.argsort(descending=True)[:10].tolist()
        close = {j for j in range(n) if any(la.cluster_labels[h, j] == la.cluster_labels[h, idx[r]] for h in range(2))}
        num = sum(math.exp(s[j]) for j in background if j in close)
        expected.append(-math.log(num / sum(math.exp(s[j]) for j in background) + EPS))
    assert out.ssl_loss.item() == pytest.approx(sum(expected) / b, rel=1e-5)
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # .mi: every view against every row of the bank as it was before this batch, at most log N
    assert out.mi.item() == pytest.approx(bank_bound(v, bank, idx, 0.1).mi.item(), rel=1e-6)
    assert out.ceiling == pytest.approx(math.log(n)) and out.mi.item() <= math.log(n)
    assert math.isnan(out.mi_estimate.item())  # LA's loss reads no MI
    # the bank took the batch: normalize(0.5 old + 0.5 v)
    assert torch.allclose(la.bank.bank[idx], F.normalize(0.5 * bank[idx] + 0.5 * v, dim=1), atol=1e-6)
    # la_loss on hand-made scores: -log(P(C & B) / P(B))
    s, c = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[True, False, True]])
    direct = -math.log((math.e ** 1 + math.e ** 0.5) / (math.e ** 1 + math.e ** 2 + math.e ** 0.5) + EPS)
    assert la_loss(s, c).item() == pytest.approx(direct, rel=1e-6)


def test_the_warm_up_is_instance_recognition_and_every_view_gets_a_gradient_at_the_presets_sizes():
    # infoview/configs/la_cifar10.yaml: 50,000 rows of 128, batch 128, 4096 background rows, t 0.07, 10 warm-up epochs.
    # LA's loss with each image its own cluster would reach a view only when its own (random) row is among
    # its 4096 nearest: about 8% of them
    n, dim, b = 50_000, 128, 128
    torch.manual_seed(0)
    la = given_la(n, dim, background_k=4096, num_kmeans=10, k=400, kmeans_start_epoch=10, temperature=0.07)
    la.set_progress(0, 390 * 200, 0.0)
    assert la.warming_up and int(la.cluster_epoch) == -1  # no clustering before epoch 10
    z = torch.randn(b, dim, requires_grad=True)
    idx = torch.randperm(n)[:b]
    bank = la.bank.bank.clone()
    out = la([z], None, idx)
    out.loss.backward()
    assert (z.grad.abs().sum(1) > 0).all(), f"{int((z.grad.abs().sum(1) == 0).sum())} of {b} views get no gradient"
    # the loss: InfoNCE of the own row against 4096 rows of other images (the draws came from the global RNG)
    assert 0 < out.ssl_loss.item() <= math.log(4097) + 3 and math.isfinite(out.mi_estimate.item())
    # its bound is still the bank's, of the scores against every row of the bank before this batch
    assert out.mi.item() == pytest.approx(bank_bound(F.normalize(z.detach(), dim=1), bank, idx, 0.07).mi.item(),
                                          rel=1e-5, abs=1e-5)
    la.set_progress(390 * 10, 390 * 200, 10.0)  # the first clustering: LA's own loss from here on
    assert not la.warming_up and int(la.cluster_epoch) == 10


def test_a_row_without_a_close_neighbour_gets_no_gradient_as_in_the_papers_loss_not_the_authors_broadcast():
    # 4 rows of 5 background scores; row 1 has no close neighbour in its background
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0], [1.5, 1.0, 0.2, 0.1, 0.0],
                           [0.3, 2.0, 1.0, 0.5, 0.1], [1.0, 0.9, 0.8, 0.7, 0.6]], requires_grad=True)
    close = torch.tensor([[True, False, True, False, False], [False] * 5,
                          [False, True, False, False, True], [True, True, False, False, False]])
    loss = la_loss(scores, close)
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.equal(grad[1], torch.zeros(5)) and (grad[[0, 2, 3]].abs().sum(1) > 0).all()
    ratio = [(scores[i].exp() * close[i]).sum() / scores[i].exp().sum() for i in range(4)]
    assert loss.item() == pytest.approx(-sum(math.log(r.item() + EPS) for r in ratio) / 4, rel=1e-6)
    # the authors' code: (B,) numerators over (B, 1) denominators, a (B, B) broadcast averaged whole
    probs = scores.exp()
    theirs = -torch.log((probs * close).sum(1) / probs.sum(1, keepdim=True) + EPS).mean()
    (their_grad,) = torch.autograd.grad(theirs, scores)
    assert their_grad[1].abs().sum() > 0  # row 1 moves there, through its denominator in the other rows' terms
    assert abs(theirs.item() - loss.item()) > 1e-3  # and the two losses differ


def test_clusterings_refresh_at_epoch_boundaries_only(monkeypatch):
    calls = []
    real = LocalAggregation.recluster
    monkeypatch.setattr(LocalAggregation, "recluster", lambda self, e: (calls.append(e), real(self, e)))
    la = given_la(kmeans_start_epoch=1)
    spe = 4
    for step in range(3 * spe):
        la.set_progress(step, 3 * spe, step / spe)
    assert calls == [1, 2]  # at steps 4 and 8; not in epoch 0 (each image its own cluster)
    assert int(la.cluster_epoch) == 2 and not torch.equal(la.cluster_labels[0], torch.arange(32, dtype=torch.int32))
    # a run resumed mid-epoch keeps the saved clusterings and makes the next at the next boundary
    resumed = given_la(kmeans_start_epoch=1)
    resumed.load_state_dict(la.state_dict())
    calls.clear()
    for step in range(2 * spe + 1, 4 * spe):
        resumed.set_progress(step, 4 * spe, step / spe)
    assert calls == [3]


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["loss"]]


def test_loss_falls_on_digits_and_mi_is_at_most_log_n(tiny, tmp_path):
    # 3 epochs of 11 steps: epoch 0 the instance-recognition warm-up (InfoNCE against 256 drawn rows, which
    # rises as the random bank fills with the first, alike embeddings), then clusterings of that bank
    assert pretrain_la([*tiny, *LA_RUN, f"out_dir={tmp_path}", "train.max_steps=33"]) == 0
    rows = _rows(tmp_path)
    loss = [float(r["loss"]) for r in rows]
    assert len(loss) == 33 and all(math.isfinite(x) for x in loss)
    assert sum(loss[-5:]) / 5 < sum(loss[:11]) / 11 - 1, loss
    assert sum(loss[-5:]) / 5 < sum(loss[12:17]) / 5, loss  # LA's loss falls once clustered
    for step, r in enumerate(rows):  # 11 steps of 128 an epoch: the rows the epoch has not visited are left
        assert float(r["mi_ceiling"]) == pytest.approx(math.log(DIGITS_TRAIN - 128 * (step % 11)), rel=1e-5)
        assert float(r["mi"]) <= float(r["mi_ceiling"])


def test_la_trains_with_its_own_loss_only(tiny, tmp_path, capsys):
    assert pretrain_la([*tiny, *LA_RUN, f"out_dir={tmp_path}", "objective.name=ring"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method=la" in err[0] and "trains with its own loss" in err[0]
    assert "objective.name=ring" in err[0] and "objective.name=infonce" in err[0]  # what it got, what it needs


class _Killed(Exception):
    pass


def test_killed_and_resumed_run_is_bit_identical(tiny, tmp_path, monkeypatch):
    """Killed mid-epoch 1 (after its clustering), resumed: the same weights, bank and clusterings as a run
    that never stopped; the resumed run keeps the saved clusterings and makes epoch 2's at its start."""
    args = [*tiny, *LA_RUN, "train.max_steps=25", "train.ckpt_every_steps=1"]
    assert pretrain_la([*args, f"out_dir={tmp_path / 'ref'}"]) == 0
    real = LocalAggregation.set_progress

    def dies_at_16(self, step, total, epoch):
        if step == 16:
            raise _Killed  # everything in memory is lost; checkpoints/last.pt holds step 16
        real(self, step, total, epoch)

    monkeypatch.setattr(LocalAggregation, "set_progress", dies_at_16)
    with pytest.raises(_Killed):
        pretrain_la([*args, f"out_dir={tmp_path / 'killed'}"])
    monkeypatch.setattr(LocalAggregation, "set_progress", real)
    assert pretrain_la([*args, f"out_dir={tmp_path / 'killed'}"]) == 0
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and {"bank.bank", "cluster_labels", "cluster_epoch"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["cluster_epoch"]) == 2


# --------------------------------------------------------------------------- DDP

BATCH, WORLD, N = 8, 2, 24


def make_ddp_method():
    """LA on a one-block ViT (no BatchNorm, whose per-rank statistics would differ by design)."""
    from infoview.models import build_encoder, projector

    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    proj = projector(enc.feature_dim, 32, 16, num_layers=2, bn=False)
    la = LocalAggregation(enc, proj, build("infonce"), 0, N, background_k=10, num_kmeans=2, k=4, kmeans_iters=5,
                          kmeans_start_epoch=0, temperature=0.1)
    la.set_progress(0, 1, 0.0)  # k-means of the random bank: the same on every rank
    return la


def _on_rank(rank: int, data_file: str) -> dict:
    views, idx = torch.load(data_file)
    b = BATCH // WORLD
    method = make_ddp_method()
    ddp = torch.nn.parallel.DistributedDataParallel(method)
    out = ddp([views[rank * b : (rank + 1) * b]], None, idx[rank * b : (rank + 1) * b])
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    return {"grads": grads, "bank": method.bank.bank.clone(), "labels": method.cluster_labels.clone(),
            "mi": out.mi.item(), "loss": out.ssl_loss.item()}


def test_two_ranks_give_the_single_process_gradient_and_identical_banks(tmp_path, gloo_ranks):
    torch.manual_seed(1)
    views = torch.randn(BATCH, 3, 16, 16)
    idx = torch.randperm(N)[:BATCH]
    torch.save((views, idx), tmp_path / "data.pt")
    ranks = gloo_ranks(_on_rank, str(tmp_path / "data.pt"), world=WORLD)
    method = make_ddp_method()
    out = method([views], None, idx)  # one process, the whole batch
    out.loss.backward()
    for key, p in method.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ranks[0]["grads"][key], p.grad, rtol=1e-4, atol=1e-6, msg=key)
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"]) and torch.equal(ranks[0]["labels"], ranks[1]["labels"])
    torch.testing.assert_close(ranks[0]["bank"], method.bank.bank, rtol=1e-5, atol=1e-6)
    # the engine averages each rank's figures: the mean of the halves is the whole batch's
    assert sum(r["mi"] for r in ranks) / WORLD == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6)
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(out.ssl_loss.item(), rel=1e-5, abs=1e-6)
