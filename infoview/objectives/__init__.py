"""Contrastive objectives as mutual-information lower bounds.

``build(name, **kw)`` makes one, ``available()`` lists the names,
``register(name)`` adds a new family. See docs/objectives.md for the formulas.
"""
from infoview.objectives.base import (
    Objective,
    ObjectiveOutput,
    available,
    build,
    objective_params,
    register,
)

# importing a family registers it
from infoview.objectives import infonce, ml_cpc, ring, hard_negative, variational  # noqa: E402,F401
from infoview.objectives.pairs import in_batch_pairs, matrix_pairs, queue_logits  # noqa: E402

__all__ = [
    "Objective",
    "ObjectiveOutput",
    "available",
    "build",
    "objective_params",
    "register",
    "in_batch_pairs",
    "matrix_pairs",
    "queue_logits",
]
