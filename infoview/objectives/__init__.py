"""Contrastive objectives as mutual-information lower bounds.

``build(name, **kw)`` makes one, ``available()`` lists the names,
``register(name)`` adds a new family. See docs/objectives.md for the formulas.

A family is one module of this package (the others are helpers: ``base``, ``lse``, ``pairs``, ``bank``,
``registry``): :mod:`infoview.objectives.registry` reads its ``@register`` from the file and imports it when
it is built, so that listing the objectives imports no torch. Names are imported on first use.
"""
from __future__ import annotations

from infoview.utils.lazy import lazy_exports

_EXPORTS = {
    "available": "registry", "build": "registry", "objective_class": "registry", "objective_params": "registry",
    "register": "registry",
    "Objective": "base", "ObjectiveOutput": "base", "Terms": "base",
    "alpha_floor": "ml_cpc",
    "bank_bound": "bank", "bank_bound_of_scores": "bank",
    "bank_logits": "pairs", "cross_view_pairs": "pairs", "in_batch_pairs": "pairs", "matrix_pairs": "pairs",
    "queue_logits": "pairs",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
