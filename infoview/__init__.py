"""infoview: self-supervised pretraining for images around mutual-information bounds.

The front door: what a script needs, documented with a runnable example in docs/api.md.

- ``run(command, *args, config=None, **keys)``: ``infoview <command>`` from Python, returning its figures;
- ``load_backbone(export_dir)``: an export (``infoview export``) as a timm model;
- ``load_backbone_spec(spec)``: whatever ``backbone=`` takes (a checkpoint or run folder, an export folder,
  ``random:...``) as the encoder with its input size and normalisation;
- ``export_backbone(checkpoint, out_dir)``: a pretraining checkpoint's encoder as ``model.safetensors`` and
  ``config.json``;
- ``build_objective(name, **params)``, ``available_objectives()``, ``register_objective(name)``,
  ``Objective``: the objectives, each a loss with the MI lower bound it certifies (``.mi``);
- ``in_batch_pairs``, ``cross_view_pairs``, ``queue_logits``, ``bank_logits``, ``matrix_pairs``: the
  (positive, negative) critic scores the objectives and their bounds read, from embeddings;
  ``bank_bound`` and ``alpha_floor``: the memory bank's bound and ML-CPC's alpha floor.

Each name is imported when it is first used, so ``import infoview`` (and ``infoview --help``) stays free of
torch.
"""
from __future__ import annotations

from infoview.version import __version__

#: the objectives' names offered here: {name here: name in infoview.objectives}
_OBJECTIVES = {
    "build_objective": "build",
    "available_objectives": "available",
    "register_objective": "register",
    "Objective": "Objective",
    "in_batch_pairs": "in_batch_pairs",
    "cross_view_pairs": "cross_view_pairs",
    "queue_logits": "queue_logits",
    "bank_logits": "bank_logits",
    "matrix_pairs": "matrix_pairs",
    "bank_bound": "bank_bound",
    "alpha_floor": "alpha_floor",
}
_EXPORT = ("load_backbone", "export_backbone")

__all__ = ["__version__", "run", "load_backbone_spec", *_EXPORT, *_OBJECTIVES]


def __getattr__(name: str):
    if name in _OBJECTIVES:
        from infoview import objectives

        return getattr(objectives, _OBJECTIVES[name])
    if name in _EXPORT:
        from infoview.backbones import export

        return getattr(export, name)
    if name == "load_backbone_spec":
        from infoview.backbones.spec import load_backbone_spec

        return load_backbone_spec
    if name == "run":
        from infoview.cli import run

        return run
    raise AttributeError(f"module 'infoview' has no attribute {name!r}; it offers {', '.join(__all__)}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
