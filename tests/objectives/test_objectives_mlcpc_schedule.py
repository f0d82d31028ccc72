"""ML-CPC's geometric alpha schedule, and which objectives pool their rows."""
from __future__ import annotations

import math

import pytest
import torch

from infoview.objectives import available, build


def test_alpha_moves_geometrically_from_start_to_target():
    obj = build("ml_cpc", alpha=0.01, alpha_start=1.0, anneal_epochs=10)
    assert obj.current_alpha == 1.0
    obj.set_epoch(5)  # half way in log space: sqrt(1 * 0.01)
    assert obj.current_alpha == pytest.approx(0.1)
    obj.set_epoch(2.5)
    assert math.log(obj.current_alpha) == pytest.approx(0.75 * math.log(1.0) + 0.25 * math.log(0.01))
    obj.set_epoch(10)
    assert obj.current_alpha == 0.01
    obj.set_epoch(50)
    assert obj.current_alpha == 0.01


def test_the_schedule_changes_the_loss_like_a_constant_alpha_would():
    torch.manual_seed(0)
    pos, neg = torch.randn(16) + 2, torch.randn(16, 15)
    scheduled = build("ml_cpc", alpha=0.01, alpha_start=1.0, anneal_epochs=4)
    scheduled.set_epoch(2)
    assert torch.allclose(scheduled(pos, neg).loss, build("ml_cpc", alpha=0.1)(pos, neg).loss)


def test_constant_alpha_ignores_epochs_and_bad_schedules_are_errors():
    obj = build("ml_cpc", alpha=0.5)
    obj.set_epoch(100)
    assert obj.current_alpha == 0.5
    with pytest.raises(ValueError, match="anneal_epochs"):
        build("ml_cpc", alpha=0.5, alpha_start=2.0)
    with pytest.raises(ValueError, match="alpha_start must be a positive"):
        build("ml_cpc", alpha=0.5, alpha_start=0.0, anneal_epochs=3)


def test_only_ml_cpc_pools_rows_across_the_batch():
    # a pooled objective is not a mean of per-row terms: the engine gathers its rows under DDP
    pooled = {name for name in available() if build(name).pooled}
    assert pooled == {"ml_cpc"}
    torch.manual_seed(1)
    pos, neg = torch.randn(8), torch.randn(8, 7)
    for name in available():
        obj = build(name)
        halves = (obj(pos[:4], neg[:4]).loss + obj(pos[4:], neg[4:]).loss) / 2
        whole = obj(pos, neg).loss
        assert torch.allclose(halves, whole, atol=1e-6) != obj.pooled, name
