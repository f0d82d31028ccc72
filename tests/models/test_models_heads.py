"""MLP heads: the projector and predictor shapes SimCLR, MoCo v3 and BYOL use."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infoview.errors import ConfigError
from infoview.models import MLP, predictor, projector


def _kinds(mlp: nn.Module) -> list[type]:
    return [type(m) for m in mlp]


def _linears(mlp: nn.Module) -> list[nn.Linear]:
    return [m for m in mlp if isinstance(m, nn.Linear)]


def test_default_mlp_is_linear_bn_relu_linear():
    mlp = MLP(16, hidden_dim=32, out_dim=8)
    assert _kinds(mlp) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    first, last = _linears(mlp)
    assert (first.in_features, first.out_features, first.bias) == (16, 32, None)  # BN follows: no bias
    assert (last.in_features, last.out_features) == (32, 8) and last.bias is not None
    assert mlp.out_dim == 8
    assert mlp(torch.randn(4, 16)).shape == (4, 8)


def test_last_bn_standardises_the_output_without_affine():
    mlp = MLP(16, hidden_dim=32, out_dim=8, last_bn=True).train()
    assert isinstance(mlp[-1], nn.BatchNorm1d) and not mlp[-1].affine
    assert _linears(mlp)[-1].bias is None
    out = mlp(torch.randn(64, 16) * 5 + 3)
    torch.testing.assert_close(out.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_without_bn_every_linear_has_a_bias():
    mlp = MLP(16, hidden_dim=32, out_dim=8, num_layers=3, bn=False)
    assert _kinds(mlp) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert all(lin.bias is not None for lin in _linears(mlp))
    assert [lin.out_features for lin in _linears(mlp)] == [32, 32, 8]


def test_one_layer_is_a_single_linear():
    mlp = MLP(16, hidden_dim=32, out_dim=8, num_layers=1)
    assert _kinds(mlp) == [nn.Linear] and mlp[0].in_features == 16 and mlp.out_dim == 8


def test_zero_layers_is_the_identity_and_reports_in_dim():
    mlp = MLP(16, out_dim=8, num_layers=0)
    x = torch.randn(4, 16)
    assert torch.equal(mlp(x), x)
    assert mlp.out_dim == 16 and len(list(mlp.parameters())) == 0


def test_gradients_reach_the_first_layer():
    mlp = MLP(16, hidden_dim=32, out_dim=8, num_layers=3)
    mlp(torch.randn(4, 16)).pow(2).sum().backward()
    assert mlp[0].weight.grad is not None and mlp[0].weight.grad.abs().sum() > 0


def test_projector_defaults_are_simclr_2048_to_128():
    head = projector(512)
    assert [(lin.in_features, lin.out_features) for lin in _linears(head)] == [(512, 2048), (2048, 128)]
    assert head.out_dim == 128 and not isinstance(head[-1], nn.BatchNorm1d)
    assert isinstance(projector(512, last_bn=True)[-1], nn.BatchNorm1d)


def test_predictor_maps_back_to_its_input_width():
    head = predictor(128)
    assert [(lin.in_features, lin.out_features) for lin in _linears(head)] == [(128, 512), (512, 128)]
    assert head.out_dim == 128
    assert head(torch.randn(4, 128)).shape == (4, 128)
    assert predictor(128, hidden_dim=64, out_dim=32).out_dim == 32


@pytest.mark.parametrize(
    "kw,word",
    [
        (dict(in_dim=16, num_layers=-1), "num_layers"),
        (dict(in_dim=16, num_layers=2.0), "num_layers"),
        (dict(in_dim=0), "in_dim"),
        (dict(in_dim=16, hidden_dim=0), "hidden_dim"),
        (dict(in_dim=16, out_dim=-3), "out_dim"),
        (dict(in_dim=16.5), "in_dim"),
    ],
)
def test_bad_sizes_are_config_errors_naming_the_setting(kw, word):
    with pytest.raises(ConfigError, match=f"MLP {word} must be"):
        MLP(**kw)
