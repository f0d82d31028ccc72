"""Split ("ghost") BatchNorm: MoCo's fix for BatchNorm's leak on one process.

With one process, MoCo's query and key encoders would normalise the same
images with the same batch statistics, and the network can use those shared
statistics to tell the positive key from the queue's keys instead of learning
features (He et al. 2020, sec. 3.3). MoCo's own single-GPU CIFAR-10 demo
(facebookresearch/moco, colab/moco_cifar10_demo.ipynb) splits each batch into
``splits`` groups that BatchNorm normalises separately, and shuffles the keys'
batch before the key encoder, so that a query and its key sit in different
groups. :func:`convert_split_bn` does the first, :class:`infoview.pretrain.
methods.MoCo` the second.

In training mode each group of N / splits consecutive samples gets its own
statistics; the running statistics move by the mean of the groups' statistics.
In eval mode it is plain BatchNorm, and the module keeps BatchNorm's
parameters and buffers under the same names, so checkpoints and exports do
not change. torch has no ghost BatchNorm; this folds the groups into the
channel axis and makes one ``F.batch_norm`` call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infoview.errors import ConfigError


class _SplitMixin:
    splits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        n, c = x.shape[0], x.shape[1]
        s = self.splits
        if n % s or n // s < 2:
            raise ConfigError(
                f"split BatchNorm: a batch of {n} does not split into {s} groups of at least 2 samples; "
                f"make the per-process batch a multiple of {s} (at least {2 * s}) or change moco.bn_splits"
            )
        rest = x.shape[2:]
        # (n, c, ...) -> (n / s, s * c, ...): group g holds samples g * n / s .. (g + 1) * n / s - 1
        folded = x.view(s, n // s, c, *rest).transpose(0, 1).reshape(n // s, s * c, *rest)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean = self.running_mean.repeat(s) if self.track_running_stats else None
        var = self.running_var.repeat(s) if self.track_running_stats else None
        weight = self.weight.repeat(s) if self.affine else None
        bias = self.bias.repeat(s) if self.affine else None
        out = F.batch_norm(folded, mean, var, weight, bias, True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(0))
                self.running_var.copy_(var.view(s, c).mean(0))
        return out.view(n // s, s, c, *rest).transpose(0, 1).reshape(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


class SplitBatchNorm1d(_SplitMixin, nn.BatchNorm1d):
    pass


class SplitBatchNorm2d(_SplitMixin, nn.BatchNorm2d):
    pass


_SPLIT = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d}


def convert_split_bn(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm1d/2d inside ``module`` (in place) by its split version.

    Parameters and buffers are kept (same tensors, same names). Returns ``module``
    (or its replacement, when ``module`` itself is a BatchNorm).
    """
    splits = int(splits)
    if splits < 1:
        raise ConfigError(f"split BatchNorm needs splits >= 1, got {splits}")
    if type(module) in _SPLIT:
        new = _SPLIT[type(module)](module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        for name, p in module.named_parameters(recurse=False):
            setattr(new, name, p)  # the same Parameter objects: an optimiser built before still holds them
        for name, b in module.named_buffers(recurse=False):
            setattr(new, name, b)
        new.splits = splits
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_split_bn(child, splits))
    return module
