"""Contrastive objectives as mutual-information lower bounds.

``build(name, **kw)`` makes one, ``available()`` lists the names,
``register(name)`` adds a new family. See docs/objectives.md for the formulas.
"""
from infoview.objectives.base import (
    Objective,
    ObjectiveOutput,
    Terms,
    available,
    build,
    objective_class,
    objective_params,
    register,
)

import importlib as _importlib  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

# importing a family registers it: every module of this package is one, or a helper of them (a new file is
# imported with the package; nothing here lists it)
for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
from infoview.objectives.bank import bank_bound, bank_bound_of_scores  # noqa: E402
from infoview.objectives.ml_cpc import alpha_floor  # noqa: E402
from infoview.objectives.pairs import (  # noqa: E402
    bank_logits,
    cross_view_pairs,
    in_batch_pairs,
    matrix_pairs,
    queue_logits,
)

__all__ = [
    "Objective",
    "ObjectiveOutput",
    "Terms",
    "alpha_floor",
    "bank_bound",
    "bank_bound_of_scores",
    "available",
    "build",
    "objective_class",
    "objective_params",
    "register",
    "bank_logits",
    "cross_view_pairs",
    "in_batch_pairs",
    "matrix_pairs",
    "queue_logits",
]
