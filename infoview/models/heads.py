"""Projector and predictor heads: small MLPs between the encoder and the objective.

SimCLR found that the contrastive loss is best computed on a projection of the
features rather than the features themselves (the projection absorbs the
invariances the loss asks for, the features keep more information for
transfer); BYOL and MoCo v3 add a predictor on the online branch. Both are the
same shape of module, so one :class:`MLP` serves both:

    num_layers - 1 times: Linear -> BatchNorm1d -> ReLU
    then:                 Linear [-> BatchNorm1d(affine=False)]   (last_bn)

A Linear followed by a BatchNorm has no bias (the BN's shift would cancel it).
The final affine-free BatchNorm is the MoCo v3 / SimCLR v2 choice for the
projector output. ``num_layers=0`` is the identity (no head), so "no
projector" is a setting rather than a special case.
"""
from __future__ import annotations

from torch import nn

from infoview.errors import ConfigError


def _check_dim(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"MLP {name} must be a positive int, got {value!r}")
    return value


class MLP(nn.Sequential):
    """``num_layers`` Linear layers with BatchNorm and ReLU between them; see the module docstring.

    ``out_dim`` is the width of the output (``in_dim`` when ``num_layers=0``).
    Being an ``nn.Sequential``, ``mlp[0]`` is the first Linear.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
    ) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ConfigError(f"MLP num_layers must be an int >= 0 (0 = identity), got {num_layers!r}")
        in_dim = _check_dim("in_dim", in_dim)
        hidden_dim = _check_dim("hidden_dim", hidden_dim)
        if num_layers > 0:
            out_dim = _check_dim("out_dim", out_dim)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        if num_layers > 0:
            layers.append(nn.Linear(width, out_dim, bias=not last_bn))
            if last_bn:
                layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim if num_layers > 0 else in_dim
        self.num_layers = num_layers

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, num_layers={self.num_layers}"


def projector(
    in_dim: int,
    hidden_dim: int = 2048,
    out_dim: int = 128,
    num_layers: int = 2,
    bn: bool = True,
    last_bn: bool = False,
) -> MLP:
    """The projection head g(h) of SimCLR / MoCo v2 (2 layers, 2048 -> 128 by default)."""
    return MLP(in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers, bn=bn, last_bn=last_bn)


def predictor(
    in_dim: int,
    hidden_dim: int = 512,
    out_dim: int | None = None,
    num_layers: int = 2,
    bn: bool = True,
) -> MLP:
    """The prediction head q(z) of BYOL / SimSiam / MoCo v3: maps embeddings back to their own width."""
    return MLP(
        in_dim, hidden_dim=hidden_dim, out_dim=in_dim if out_dim is None else out_dim, num_layers=num_layers, bn=bn
    )
