"""Two encoders over the L and ab channels of CIEL*a*b* (``model.streams=lab``, CMC's split of the image).

Contrastive Multiview Coding (Tian, Krishnan, Isola 2019) views an image as
its luminance L (1 channel) and its chrominance ab (2 channels), with one
network per view. :class:`LabStreams` is that pair as ONE module that takes
what every encoder takes, a normalised RGB batch: it undoes the
normalisation (``mean``, ``std``: the run's ``augment.normalize``), converts
[0, 1] RGB to Lab (``kornia.color.rgb_to_lab``, in float32 with autocast
off), scales each channel to about [-1, 1] with the constants of CMC's
train_CMC.py (L: (L - 50) / 50; a, b: centred and halved over the range
sRGB reaches), and runs ``l`` (a timm model with ``in_chans=1``) on L and
``ab`` (``in_chans=2``) on ab. Its output is both halves' pooled features
side by side, (B, F_l + F_ab): what CMC's linear evaluation reads, and what
the online monitors, ``infoview linear`` / ``knn`` and exports read here.
``split_features`` gives the two halves apart (the method contrasts them).

The mean and std are not weights (not in the state dict): they come from the
config that builds the encoder, so a checkpoint or export holds the two
timm models' weights under ``l.*`` and ``ab.*``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from infoview.errors import InfoviewError

#: CMC's Lab normalisation (train_CMC.py, ``args.view == 'Lab'``): the centre and half-range of L, a, b over sRGB
LAB_CENTRE = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_HALF_RANGE = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)
#: how many input channels each half takes
LAB_CHANNELS = {"l": 1, "ab": 2}


def rgb_to_lab_scaled(rgb: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (B, 3, H, W) -> Lab scaled to about [-1, 1] per channel, float32 (autocast off)."""
    import kornia

    with torch.autocast(rgb.device.type, enabled=False):
        lab = kornia.color.rgb_to_lab(rgb.float().clamp(0.0, 1.0))
        centre = lab.new_tensor(LAB_CENTRE).view(1, 3, 1, 1)
        half = lab.new_tensor(LAB_HALF_RANGE).view(1, 3, 1, 1)
        return (lab - centre) / half


class LabStreams(nn.Module):
    """Normalised RGB in; the L network's and the ab network's pooled features, concatenated, out."""

    def __init__(self, l_net: nn.Module, ab_net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.l = l_net
        self.ab = ab_net
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)
        self.l_features = int(l_net.num_features)
        self.ab_features = int(ab_net.num_features)
        self.num_features = self.l_features + self.ab_features

    def to_lab(self, x: torch.Tensor) -> torch.Tensor:
        """The run's normalised RGB -> scaled Lab (B, 3, H, W): L in channel 0, ab in 1:3."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the Lab encoder takes (B, 3, H, W) RGB batches, got shape {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            rgb = x.float() * self.std.float() + self.mean.float()
        return rgb_to_lab_scaled(rgb)

    def split_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features of L (B, F_l), features of ab (B, F_ab)) of a normalised RGB batch."""
        lab = self.to_lab(x)
        if x.is_contiguous(memory_format=torch.channels_last):
            lab = lab.contiguous(memory_format=torch.channels_last)
        return self.l(lab[:, :1]), self.ab(lab[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.split_features(x), dim=1)

    def extra_repr(self) -> str:
        return f"l_features={self.l_features}, ab_features={self.ab_features}"


def refuse_two_streams(encoder: nn.Module, task: str) -> None:
    """An error for a task that takes one network's stages (detection, segmentation) given CMC's two."""
    if isinstance(getattr(encoder, "backbone", encoder), LabStreams):
        raise InfoviewError(f"{task} takes one timm network's stages, and this backbone is CMC's two "
                            "(model.streams=lab, on L and on ab): score it with `infoview linear` or `infoview knn`")
