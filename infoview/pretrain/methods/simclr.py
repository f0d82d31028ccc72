"""SimCLR: every view of every image against every other view of the global batch."""
from __future__ import annotations

import torch

from infoview.objectives import in_batch_pairs
from infoview.pretrain.methods.base import (
    Method,
    StepOutput,
    method_temperature,
    projector_from_config,
    register_method,
)
from infoview.schema import Key
from infoview.training import distributed as D


@register_method("simclr")
class SimCLR(Method):
    """In-batch contrastive learning (Chen et al. 2020) with any objective."""

    # unbounded here: method_temperature's check says why it must be positive ("... divides the scores")
    DEFAULTS = {"temperature": Key(0.2, "the cosine similarities are divided by it (positive)")}
    demo = "infoview pretrain --config demo out_dir=runs/demo_simclr  (make demo's own run)"

    @classmethod
    def from_config(cls, cfg, encoder, objective, num_classes: int, num_samples: int = 0) -> "SimCLR":
        proj = projector_from_config(cfg.model, encoder.feature_dim)
        return cls(encoder, proj, objective, num_classes, temperature=method_temperature(cfg))

    def __init__(self, encoder, projector, objective, num_classes: int = 0, temperature: float = 0.2):
        super().__init__(encoder, projector, objective, num_classes)
        self.temperature = float(temperature)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> StepOutput:
        first, z = self.embed(views)
        v, b, d = z.shape
        if D.is_distributed():
            all_z = D.gather_with_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)  # (V, B_total, D)
            offset = D.row_offset(b)
            pos, neg, k = in_batch_pairs(z, self.temperature, all_views=all_z, offset=offset, masked=True)
        else:
            all_z = z
            pos, neg, k = in_batch_pairs(z, self.temperature, masked=True)
        # masked: the negatives stay in the score matrix (their own image's columns -inf), not copied out
        out = self._objective(pos, neg, k)
        return self._finish(out, self._certify(all_z[0], all_z[1]), first, labels)
