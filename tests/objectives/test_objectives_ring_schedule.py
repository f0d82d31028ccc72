"""Ring's annealed outer threshold."""
from __future__ import annotations

import math

import pytest
import torch

from infoview.objectives import build


def test_anneal_from_one_to_target():
    ring = build("ring", outer=0.2, inner=0.0, anneal_epochs=10)
    assert ring.current_outer == 1.0  # before any set_epoch
    ring.set_epoch(0)
    assert ring.current_outer == 1.0
    ring.set_epoch(5)
    assert ring.current_outer == pytest.approx(0.6)
    ring.set_epoch(2.5)  # fractional epochs
    assert ring.current_outer == pytest.approx(0.8)
    ring.set_epoch(10)
    assert ring.current_outer == 0.2  # exactly the target, not 0.19999999999999996
    ring.set_epoch(37)
    assert ring.current_outer == 0.2
    ring.set_epoch(0)  # e.g. a fresh run re-using the module
    assert ring.current_outer == 1.0


def test_no_annealing_by_default():
    ring = build("ring", outer=0.3)
    assert ring.current_outer == 0.3
    ring.set_epoch(0)
    assert ring.current_outer == 0.3


def test_annealing_changes_which_negatives_count():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(8, generator=g), torch.randn(8, 20, generator=g)
    ring = build("ring", outer=0.1, inner=0.0, anneal_epochs=4)
    ring.set_epoch(0)
    first = ring(pos, neg)
    nce = build("infonce")(pos, neg)
    # all negatives at epoch 0: the InfoNCE cross-entropy and bound
    assert first.loss.item() == pytest.approx(nce.loss.item() + math.log(21), abs=1e-5)
    assert first.mi.item() == pytest.approx(nce.mi.item(), abs=1e-5)
    ring.set_epoch(2)  # outer 0.55: the 11 hardest negatives
    assert ring.ranks(20) == (0, 11)
    ring.set_epoch(4)
    assert ring.ranks(20) == (0, 2)
    last = ring(pos, neg)
    assert last.loss.item() < first.loss.item()  # fewer negatives, easier task
