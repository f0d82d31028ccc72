"""bank_bound: the view against every row of a memory bank, a lower bound on I(view; image index)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infoview.objectives import bank as bank_mod
from infoview.objectives.bank import bank_bound, bank_bound_of_scores

N, D, R, S = 64, 8, 1.0, 0.45  # images, width, the mean's norm, the noise


def _gaussian_views(n_rows: int, seed: int):
    """Views x = R mu_i + S eps of images i uniform over N: I(X; I) is known through p(i | x)."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    i = torch.randint(0, N, (n_rows,), generator=g)
    x = R * mu[i] + S * torch.randn(n_rows, D, generator=g, dtype=torch.float64)
    return mu, i, x


def _true_mi() -> float:
    """I(X; I) = log N + E log p(I | X), the posterior exact (unit-norm means: the critic <x, mu_j> R / S^2)."""
    mu, i, x = _gaussian_views(400_000, seed=1)
    logits = x @ mu.T * (R / S**2)
    return math.log(N) + (logits.gather(1, i[:, None])[:, 0] - torch.logsumexp(logits, 1)).mean().item()


def test_the_bank_bound_stays_below_the_true_mi_for_any_critic_and_reaches_it_with_the_best():
    truth = _true_mi()
    assert 1.5 < truth < math.log(N) - 0.3  # a bound with room on both sides
    mu, i, x = _gaussian_views(100_000, seed=2)
    best = S**2 / R  # the temperature that makes <x, mu_j> / t the log-likelihood ratio
    assert bank_bound(x, mu, i, best).mi.item() == pytest.approx(truth, abs=0.02)
    noisy_bank = F.normalize(mu + 0.3 * torch.randn(mu.shape, generator=torch.Generator().manual_seed(3),
                                                   dtype=torch.float64), dim=1)
    critics = [(x, mu, best * c) for c in (0.25, 0.5, 2.0, 4.0)]
    critics += [(F.normalize(x, dim=1), mu, best), (x, noisy_bank, best), (x, mu[torch.randperm(N)], best)]
    for q, bank, t in critics:
        out = bank_bound(q, bank, i, t)
        assert out.mi.item() <= truth + 0.02 and out.ceiling == pytest.approx(math.log(N))


def test_chunks_of_the_bank_give_the_whole_sum(monkeypatch):
    mu, i, x = _gaussian_views(50, seed=4)
    whole = bank_bound(x, mu, i, 0.3).mi
    monkeypatch.setattr(bank_mod, "CHUNK", 7)  # 64 rows in 10 chunks, the last one short
    assert torch.allclose(bank_bound(x, mu, i, 0.3).mi, whole, rtol=0, atol=1e-12)
    logits = x @ mu.T / 0.3
    direct = math.log(N) + (logits.gather(1, i[:, None])[:, 0] - torch.logsumexp(logits, 1)).mean()
    assert torch.allclose(whole, direct, rtol=0, atol=1e-12)


def test_the_bound_of_a_methods_own_scores_is_the_bank_bound():
    """IR and LA certify from the (B, N) scores they train on, not from a second product."""
    mu, i, x = _gaussian_views(50, seed=6)
    q = F.normalize(x, dim=1)
    out = bank_bound_of_scores(q @ mu.T / 0.3, i)
    assert torch.allclose(out.mi, bank_bound(q, mu, i, 0.3).mi, rtol=0, atol=1e-12)
    assert out.ceiling == pytest.approx(math.log(N))
    with pytest.raises(ValueError, match=r"scores \(B, N\) and indices \(B,\) must agree"):
        bank_bound_of_scores(q @ mu.T, i[:4])


def test_given_the_images_an_epoch_visited_the_bound_is_over_the_others_and_below_their_true_mi(monkeypatch):
    """A loader's index is uniform over the images its epoch has not visited yet (R of them): the bound with
    that prior, normalised over those rows, stays below log R + E log p(I | X) and reaches it with the best
    critic; a row whose image was visited (a pad of DistributedSampler) counts 0."""
    visited = torch.zeros(N, dtype=torch.bool)
    visited[torch.randperm(N, generator=torch.Generator().manual_seed(7))[:24]] = True
    rest = (~visited).nonzero()[:, 0]
    mu, _, _ = _gaussian_views(1, seed=8)
    g = torch.Generator().manual_seed(9)
    i = rest[torch.randint(0, len(rest), (100_000,), generator=g)]
    x = R * mu[i] + S * torch.randn(len(i), D, generator=g, dtype=torch.float64)
    logits = (x @ mu.T * (R / S**2)).masked_fill(visited[None], -math.inf)
    truth = math.log(len(rest)) + (logits.gather(1, i[:, None])[:, 0] - torch.logsumexp(logits, 1)).mean().item()
    best = bank_bound(x, mu, i, S**2 / R, visited)
    assert best.ceiling == pytest.approx(math.log(40)) and best.mi.item() == pytest.approx(truth, abs=0.02)
    for t in (S**2 / R * 0.5, S**2 / R * 2):
        assert bank_bound(x, mu, i, t, visited).mi.item() <= truth + 0.02
    q = x[:50]
    whole = bank_bound(q, mu, i[:50], 0.3, visited)
    assert torch.allclose(bank_bound_of_scores(q @ mu.T / 0.3, i[:50], visited).mi, whole.mi, rtol=0, atol=1e-12)
    monkeypatch.setattr(bank_mod, "CHUNK", 7)
    assert torch.allclose(bank_bound(q, mu, i[:50], 0.3, visited).mi, whole.mi, rtol=0, atol=1e-12)
    # a row of a visited image adds 0: half the rows replaced by visited images halves the mean
    pads = visited.nonzero()[:, 0]  # 24
    mixed = bank_bound(torch.cat([q[:24], q[:24]]), mu, torch.cat([i[:24], pads]), 0.3, visited)
    assert torch.allclose(mixed.mi, bank_bound(q[:24], mu, i[:24], 0.3, visited).mi / 2, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"visited must be \(64,\) bool"):
        bank_bound(q, mu, i[:50], 0.3, visited[:10])


def test_bad_shapes_are_named():
    mu, i, x = _gaussian_views(5, seed=5)
    with pytest.raises(ValueError, match="must share D"):
        bank_bound(x[:, :3], mu, i, 0.1)
    with pytest.raises(ValueError, match=r"indices must be \(5,\)"):
        bank_bound(x, mu, i[:4], 0.1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        bank_bound(x, mu, i, 0.0)
