"""Split (ghost) BatchNorm: each group of the batch normalised on its own, MoCo's single-process fix."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infoview.errors import ConfigError
from infoview.models import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_bn


def _bn_with_random_affine(cls, c):
    bn = cls(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (12, 3, 4, 4)), (nn.BatchNorm1d, (12, 5)),
                                       (nn.BatchNorm1d, (12, 5, 7))])
def test_each_group_is_normalised_alone_and_running_stats_average(cls, shape):
    torch.manual_seed(0)
    bn = _bn_with_random_affine(cls, shape[1])
    per_group = [cls(shape[1]) for _ in range(3)]
    for g in per_group:
        g.load_state_dict(bn.state_dict())
    x = torch.randn(*shape) * 3 + 1
    split = convert_split_bn(nn.Sequential(bn), 3)[0]
    assert isinstance(split, cls)  # still a BatchNorm for code that looks for one
    out = split(x)
    ref = torch.cat([g(c) for g, c in zip(per_group, x.chunk(3))])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(split.running_mean, torch.stack([g.running_mean for g in per_group]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([g.running_var for g in per_group]).mean(0))
    assert int(split.num_batches_tracked) == 1
    # and the groups differ from one BatchNorm over the whole batch
    whole = cls(shape[1])
    whole.load_state_dict(per_group[0].state_dict() | {"running_mean": torch.zeros(shape[1]),
                                                        "running_var": torch.ones(shape[1])})
    assert not torch.allclose(out, whole(x), atol=1e-3)


def test_eval_mode_is_plain_batchnorm_and_the_state_dict_keeps_its_names():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), _bn_with_random_affine(nn.BatchNorm2d, 4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))
    keys = list(net.state_dict())
    params = list(net.parameters())
    net.train()
    net(torch.randn(8, 3, 6, 6))  # some running statistics
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    convert_split_bn(net, 4)
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[5], SplitBatchNorm1d)
    assert list(net.state_dict()) == keys
    assert all(a is b for a, b in zip(net.parameters(), params))  # an optimiser built before still holds them
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6),
                        nn.BatchNorm1d(6))
    ref.load_state_dict(plain)
    net.eval(), ref.eval()
    x = torch.randn(5, 3, 6, 6)  # any batch size in eval mode
    torch.testing.assert_close(net(x), ref(x))


def test_a_batch_that_does_not_split_is_a_clear_error():
    bn = convert_split_bn(nn.BatchNorm1d(3), 4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        bn(torch.randn(10, 3))
    with pytest.raises(ConfigError, match="at least 2 samples"):
        bn(torch.randn(4, 3))
