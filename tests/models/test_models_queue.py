"""MoCo's negative queue and the instance-discrimination memory bank."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infoview.errors import ConfigError, InfoviewError
from infoview.models import EpochVisits, MemoryBank, NegativeQueue


def _keys(b: int, dim: int = 4, start: float = 1.0) -> torch.Tensor:
    """Row i is filled with start + i, so a row's origin can be read off the queue."""
    return (start + torch.arange(b, dtype=torch.float32))[:, None].repeat(1, dim)


# --------------------------------------------------------------------------- queue


def test_new_queue_holds_unit_random_keys_and_nothing_real():
    q = NegativeQueue(dim=4, size=10)
    assert q.negatives.shape == (10, 4)
    torch.testing.assert_close(q.negatives.norm(dim=1), torch.ones(10))
    assert q.filled == 0 and int(q.ptr) == 0 and q.ptr.dtype == torch.long
    assert torch.equal(q(), q.negatives)


def test_building_a_queue_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = NegativeQueue(8, 16, seed=3), NegativeQueue(8, 16, seed=3), NegativeQueue(8, 16, seed=4)
    NegativeQueue(8, 16, seed=None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, c.keys)


def test_enqueue_writes_at_the_pointer_and_wraps_around():
    q = NegativeQueue(dim=4, size=10)
    q.enqueue(_keys(4, start=1))
    q.enqueue(_keys(4, start=5))
    assert int(q.ptr) == 8 and q.filled == 8
    assert torch.equal(q.negatives[:8], _keys(8, start=1))
    q.enqueue(_keys(4, start=9))  # 9, 10 land in rows 8, 9; 11, 12 overwrite rows 0, 1
    assert int(q.ptr) == 2 and q.filled == 10
    assert q.negatives[:, 0].tolist() == [11, 12, 3, 4, 5, 6, 7, 8, 9, 10]


def test_a_batch_larger_than_the_queue_keeps_its_last_keys():
    q = NegativeQueue(dim=4, size=5)
    q.enqueue(_keys(2, start=100))
    q.enqueue(_keys(7, start=1))  # as if written one by one from row 2: keys 3..7 survive
    assert int(q.ptr) == (2 + 7) % 5 and q.filled == 5
    assert q.negatives[:, 0].tolist() == [4, 5, 6, 7, 3]


def test_negatives_are_detached_copies_unaffected_by_later_enqueues():
    q = NegativeQueue(dim=4, size=6)
    keys = torch.randn(3, 4, requires_grad=True)
    q.enqueue(keys)
    before = q.negatives
    assert not before.requires_grad and not q.keys.requires_grad
    q.enqueue(torch.zeros(3, 4))
    assert torch.equal(before[:3], keys.detach())
    assert torch.equal(q.negatives[3:], torch.zeros(3, 4))


def test_state_dict_round_trips_into_a_fresh_queue():
    q = NegativeQueue(dim=4, size=10, seed=1)
    q.enqueue(_keys(7))
    fresh = NegativeQueue(dim=4, size=10, seed=2)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.keys, q.keys) and int(fresh.ptr) == 7 and fresh.filled == 7
    q.enqueue(_keys(5, start=50))
    fresh.enqueue(_keys(5, start=50))
    assert torch.equal(fresh.negatives, q.negatives) and fresh.filled == q.filled == 10


def test_enqueue_rejects_keys_of_the_wrong_width():
    q = NegativeQueue(dim=4, size=10)
    with pytest.raises(InfoviewError, match=r"shape \(B, 4\), got \(3, 5\)"):
        q.enqueue(torch.randn(3, 5))


@pytest.mark.parametrize("kw,word", [(dict(dim=0), "dim"), (dict(dim=4, size=0), "size"), (dict(dim=4.0), "dim")])
def test_bad_queue_sizes_are_config_errors(kw, word):
    with pytest.raises(ConfigError, match=f"NegativeQueue {word} must be a positive int"):
        NegativeQueue(**kw)


# --------------------------------------------------------------------------- memory bank


def test_bank_starts_with_unit_rows_and_blends_updates():
    bank = MemoryBank(num_samples=6, dim=4, momentum=0.5, seed=0)
    torch.testing.assert_close(bank.bank.norm(dim=1), torch.ones(6))
    old = bank.bank.clone()
    feats = torch.randn(2, 4, requires_grad=True) * 3
    bank.update(torch.tensor([1, 4]), feats)
    expected = F.normalize(0.5 * old[[1, 4]] + 0.5 * F.normalize(feats.detach(), dim=1), dim=1)
    torch.testing.assert_close(bank.bank[[1, 4]], expected)
    assert torch.equal(bank.bank[[0, 2, 3, 5]], old[[0, 2, 3, 5]])
    assert not bank.bank.requires_grad


def test_bank_with_zero_momentum_stores_the_normalised_features():
    bank = MemoryBank(num_samples=3, dim=4, momentum=0.0)
    feats = torch.tensor([[3.0, 0.0, 4.0, 0.0]])
    bank.update(torch.tensor([2]), feats)
    torch.testing.assert_close(bank.bank[2], torch.tensor([0.6, 0.0, 0.8, 0.0]))


def test_samples_never_include_the_rows_own_index_and_cover_all_others():
    bank = MemoryBank(num_samples=5, dim=4)
    idx = torch.tensor([0, 2, 4])
    drawn = bank.sample(idx, k=400, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 400) and drawn.dtype == torch.long
    for row, own in zip(drawn, idx.tolist()):
        assert set(row.tolist()) == set(range(5)) - {own}


def test_sampling_is_reproducible_with_a_generator():
    bank = MemoryBank(num_samples=50, dim=4)
    idx = torch.tensor([3, 7])
    a = bank.sample(idx, 8, generator=torch.Generator().manual_seed(1))
    b = bank.sample(idx, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_negatives_are_the_bank_rows_of_the_sampled_indices():
    bank = MemoryBank(num_samples=20, dim=4)
    idx = torch.tensor([0, 5, 19])
    negs = bank.negatives(idx, 6, generator=torch.Generator().manual_seed(2))
    drawn = bank.sample(idx, 6, generator=torch.Generator().manual_seed(2))
    assert negs.shape == (3, 6, 4)
    assert torch.equal(negs, bank.bank[drawn])


def test_out_of_range_indices_are_named():
    bank = MemoryBank(num_samples=10, dim=4)
    with pytest.raises(InfoviewError, match=r"out of range \[0, 10\): 10, -1"):
        bank.update(torch.tensor([3, 10, -1]), torch.randn(3, 4))
    with pytest.raises(InfoviewError, match=r"out of range \[0, 10\): 12"):
        bank.sample(torch.tensor([12]), 4)


def test_update_checks_the_feature_shape():
    bank = MemoryBank(num_samples=10, dim=4)
    with pytest.raises(InfoviewError, match=r"feats of shape \(2, 4\)"):
        bank.update(torch.tensor([1, 2]), torch.randn(2, 5))


def test_bank_state_dict_round_trips():
    bank = MemoryBank(num_samples=10, dim=4, seed=0)
    bank.update(torch.tensor([1, 2]), torch.randn(2, 4))
    fresh = MemoryBank(num_samples=10, dim=4, seed=9)
    fresh.load_state_dict(bank.state_dict())
    assert torch.equal(fresh.bank, bank.bank)


def test_bad_bank_settings_are_config_errors():
    with pytest.raises(ConfigError, match="momentum must be in"):
        MemoryBank(10, 4, momentum=1.2)
    with pytest.raises(ConfigError, match="num_samples"):
        MemoryBank(0, 4)


# --------------------------------------------------------------------------- epoch visits


def test_visits_accumulate_within_an_epoch_and_a_new_epoch_forgets_them():
    v = EpochVisits(10)
    v.start(0)
    v.mark(torch.tensor([1, 4]))
    v.start(0)  # every step says its epoch: the same one keeps the visits
    v.mark(torch.tensor([4, 7]))
    assert v.visited.nonzero()[:, 0].tolist() == [1, 4, 7] and int(v.epoch) == 0
    resumed = EpochVisits(10)
    resumed.load_state_dict(v.state_dict())  # a run resumed mid-epoch knows what the epoch visited
    resumed.start(0)
    assert torch.equal(resumed.visited, v.visited)
    v.start(1)
    assert not v.visited.any() and int(v.epoch) == 1


def test_a_state_saved_before_visits_were_kept_loads_as_all_visited_until_the_next_epoch():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = MemoryBank(6, 2)
            self.visits = EpochVisits(6)

    old = {k: v for k, v in Holder().state_dict().items() if not k.startswith("visits.")}
    h = Holder()
    h.load_state_dict(old)  # strict: no missing key
    h.visits.start(3)  # the resumed epoch: which images it visited is unknown, so all count as visited
    assert h.visits.visited.all()
    h.visits.start(3)
    assert h.visits.visited.all()
    h.visits.start(4)
    assert not h.visits.visited.any()
