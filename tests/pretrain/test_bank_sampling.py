"""The bank bound of ir and la under the loader's sampling: every image once per epoch, not independent draws.

The constructed case: every image is the same, so a view says nothing about which image it was made from
(I(view; index) = 0). The encoder drifts within each epoch: at step t of epoch e it maps every image to the
t-th corner of a regular simplex (corners at cosine -1/(T-1) to each other) in a block of dimensions of its
own for each epoch. A bank row refreshed this epoch then scores below one that is not; and the loader's
order guarantees that the view's own row is one that is not. A bound normalised over the whole bank read
that as information about the image: +0.67 nats on average over epochs 1-2 and +1.74 at an epoch's last step.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infoview.data.loader import shard_order
from infoview.objectives import build
from infoview.pretrain.methods.ir import InstanceRecognition
from infoview.pretrain.methods.la import LocalAggregation

EPOCHS = 3


def simplex(e: int, steps: int) -> torch.Tensor:
    """(steps, EPOCHS * steps): unit vectors at cosine -1/(steps - 1) to each other, in epoch e's own dims."""
    corners = (torch.eye(steps) - 1.0 / steps) * math.sqrt(steps / (steps - 1))
    out = torch.zeros(steps, EPOCHS * steps)
    out[:, e * steps : (e + 1) * steps] = corners
    return out


class Drifting(nn.Module):
    """Every image to the same embedding, the one the test sets before each step: it drifts within an epoch."""

    def __init__(self, dim: int):
        super().__init__()
        self.feature_dim = self.out_dim = dim
        self.current = torch.zeros(dim)

    def forward(self, x):
        return self.current.expand(x.shape[0], -1).clone()


def build_method(name: str, n: int, dim: int):
    enc, head = Drifting(dim), nn.Identity()
    head.out_dim = dim
    if name == "ir":
        m = InstanceRecognition(enc, head, build("infonce"), num_samples=n, temperature=0.05, num_negatives=16,
                                bank_momentum=0.0, seed=0)
    else:  # la's warm-up epochs; its bound comes from the same scores whatever its loss
        m = LocalAggregation(enc, head, build("infonce"), 0, n, temperature=0.05, background_k=16, num_kmeans=1,
                             k=4, kmeans_start_epoch=EPOCHS, bank_momentum=0.0, seed=0)
    return m, enc


def run(name: str, n: int, orders: list[list[torch.Tensor]]) -> list[tuple[float, float]]:
    """(mi, ceiling) of every step; ``orders[e]``: the global batches of epoch e, in the loader's order."""
    spe = len(orders[0])
    m, enc = build_method(name, n, EPOCHS * spe)
    for e, batches in enumerate(orders):
        corners = simplex(e, spe)
        for t, idx in enumerate(batches):
            step = e * spe + t
            m.set_progress(step, EPOCHS * spe, step / spe)
            enc.current = corners[t]
            with torch.no_grad():
                out = m([torch.zeros(len(idx), 3, 4, 4)], None, idx)  # every image the same
            yield out.mi.item(), out.ceiling


@pytest.mark.parametrize("name", ["ir", "la"])
def test_identical_images_read_no_information_whatever_the_loaders_order_reveals(name):
    n, b = 64, 8
    gen = torch.Generator().manual_seed(0)
    orders = [list(torch.randperm(n, generator=gen).view(n // b, b)) for _ in range(EPOCHS)]
    steps = list(run(name, n, orders))
    later = [mi for mi, _ in steps[n // b :]]  # from epoch 1 on the rows not refreshed hold last epoch's corners
    assert sum(later) / len(later) <= 1e-6, f"mean mi {sum(later) / len(later):.3f} nats, true MI 0"
    assert max(later) <= 1e-6, later  # at every step, the epoch's last included
    # epoch 0: the rows not yet refreshed are the bank's random initial rows: 0 up to their noise
    assert sum(mi for mi, _ in steps[: n // b]) / (n // b) <= 0.05
    # the ceiling: log of the rows the step's images could have been drawn from
    assert [c for _, c in steps[: n // b]] == pytest.approx([math.log(n - t * b) for t in range(n // b)])


@pytest.mark.parametrize("name", ["ir", "la"])
def test_four_ranks_on_a_padded_split_read_no_information_either(name):
    # 4 ranks of 3 rows over 47 images, in the engine's loader order: DistributedSampler pads the epoch's
    # order to 48 with its first image, which comes back at the epoch's last step (4 steps of 12 rows)
    n, world, local = 47, 4, 3
    orders = []
    for e in range(EPOCHS):
        ranks = [torch.as_tensor(shard_order(n, seed=0, epoch=e, shuffle=True, rank=r, world_size=world))
                 for r in range(world)]
        spe = len(ranks[0]) // local
        orders.append([torch.cat([r[s * local : (s + 1) * local] for r in ranks]) for s in range(spe)])
    for batches in orders:  # the last step repeats an image of the first
        assert len(set(torch.cat(batches).tolist())) == n and len(torch.cat(batches)) == n + 1
    steps = list(run(name, n, orders))
    later = [mi for mi, _ in steps[len(orders[0]) :]]
    assert max(later) <= 1e-6, later
