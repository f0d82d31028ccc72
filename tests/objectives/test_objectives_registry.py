"""The registry a config file or a new objective goes through."""
from __future__ import annotations

import pytest
import torch

import infoview.objectives as objectives
from infoview.objectives import Objective, Terms, available, build, objective_params, register
from infoview.objectives import base

SEVEN = ["debiased", "hard_negative", "infonce", "js", "ml_cpc", "nwj", "ring"]


def test_available_lists_all_seven():
    assert available() == SEVEN


def test_unknown_name_lists_available_and_suggests_nearest():
    with pytest.raises(ValueError) as err:
        build("infonse")
    msg = str(err.value)
    assert "did you mean 'infonce'" in msg
    for name in available():
        assert name in msg


def test_unknown_name_without_a_near_match_still_lists_names():
    with pytest.raises(ValueError, match="Available: debiased, hard_negative"):
        build("xyzzy")


@pytest.mark.parametrize(
    "name,kw,hint",
    [("ml_cpc", {"alpah": 0.5}, "alpha"), ("ring", {"outter": 0.2}, "outer"), ("hard_negative", {"tauplus": 0.1}, "tau_plus"), ("debiased", {"temprature": 0.2}, "temperature")],
)
def test_unknown_parameter_suggests_nearest(name, kw, hint):
    with pytest.raises(ValueError, match=f"did you mean '{hint}'"):
        build(name, **kw)


def test_debiased_has_no_beta():
    with pytest.raises(ValueError, match="no parameter 'beta'"):
        build("debiased", beta=1.0)


def test_objective_params_give_defaults():
    assert objective_params("ml_cpc") == {"alpha": 1.0, "alpha_start": None, "anneal_epochs": 0.0,
                                          "kl_over_alpha": False}
    assert objective_params("ring") == {"outer": 0.1, "inner": 0.1, "anneal_epochs": 0}
    assert objective_params("hard_negative") == {"beta": 1.0, "tau_plus": 0.1, "temperature": 0.5}
    assert objective_params("debiased") == {"tau_plus": 0.1, "temperature": 0.5}
    assert objective_params("infonce") == {}


@pytest.mark.parametrize(
    "name,kw,word",
    [
        ("ml_cpc", {"alpha": 0.0}, "alpha"),
        ("ring", {"outer": 0.0}, "outer"),
        ("ring", {"outer": 1.5}, "outer"),
        ("ring", {"inner": 1.0}, "inner"),
        ("ring", {"anneal_epochs": -1}, "anneal_epochs"),
        ("hard_negative", {"tau_plus": 1.0}, "tau_plus"),
        ("debiased", {"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_parameter_values_name_the_parameter(name, kw, word):
    with pytest.raises(ValueError, match=word):
        build(name, **kw)


@pytest.mark.parametrize(
    "pos,neg,word",
    [
        (torch.zeros(4, 1), torch.zeros(4, 3), "pos must be"),
        (torch.zeros(4), torch.zeros(4), "neg must be"),
        (torch.zeros(4), torch.zeros(5, 3), "N = 4"),
        (torch.zeros(4), torch.zeros(4, 0), "at least one negative"),
    ],
)
def test_wrong_shapes_give_clear_errors(pos, neg, word):
    with pytest.raises(ValueError, match=word):
        build("infonce")(pos, neg)


def test_register_a_new_objective(monkeypatch):
    monkeypatch.setattr(base._OBJECTIVES, "items", dict(base._OBJECTIVES.items))

    @register("margin")
    class Margin(Objective):
        """Hinge on the hardest negative (not an MI bound: certifies 0, which always holds)."""

        def __init__(self, margin: float = 1.0):
            super().__init__()
            self.margin = margin

        def compute(self, pos, neg):
            loss = torch.relu(self.margin - pos + neg.max(dim=1).values).mean()
            return Terms(loss, torch.zeros_like(loss), ceiling=0.0)

    assert "margin" in objectives.available()
    assert objective_params("margin") == {"margin": 1.0}
    out = build("margin", margin=0.5)(torch.tensor([1.0]), torch.tensor([[0.8, 0.2]]))
    assert out.loss.item() == pytest.approx(0.3)
    assert out.mi.item() == 0.0 and out.ceiling == 0.0 and out.estimate is None

    @register("old_style")
    class OldStyle(Objective):
        def compute(self, pos, neg):
            return pos.mean(), pos.mean()

    with pytest.raises(TypeError, match="Terms"):
        build("old_style")(torch.tensor([1.0]), torch.tensor([[0.8, 0.2]]))
    with pytest.raises(ValueError, match="already registered"):
        register("margin")(type("Other", (Objective,), {}))


def known_mi_grid_problems(name: str, m: int = 8) -> list[str]:
    """What is wrong with objective ``name``'s known-MI grid: an objective with parameters declares the values
    its bound is checked at (``known_mi_grid``); each point names parameters it has and builds."""
    cls, params = objectives.objective_class(name), objective_params(name)
    grid = cls.known_mi_grid(m)
    problems = []
    if params and "known_mi_grid" not in vars(cls):
        problems.append(f"{name} has parameters ({', '.join(params)}) and declares no known_mi_grid")
    if not grid or not all(isinstance(point, dict) for point in grid):
        problems.append(f"{name}.known_mi_grid({m}) must be a non-empty list of dicts, got {grid!r}")
        return problems
    for point in grid:
        if set(point) - set(params):
            problems.append(f"{name}.known_mi_grid: {point} names no parameter of {name}")
        else:
            build(name, **point)
    return problems


def test_every_objective_declares_the_grid_its_bound_is_checked_at():
    """The known-MI test (test_objectives_exact_critic.py) runs each registered objective at its grid: none may
    have parameters and leave the grid to the default, or declare an empty one."""
    problems = [p for name in available() for p in known_mi_grid_problems(name)]
    assert not problems, "\n".join(problems)


def test_an_objective_without_a_grid_is_caught(monkeypatch):
    monkeypatch.setattr(base._OBJECTIVES, "items", dict(base._OBJECTIVES.items))

    @register("gridless")
    class Gridless(Objective):
        """InfoNCE scaled by ``weight``: a parameter, and no grid to check it at."""

        def __init__(self, weight: float = 1.0):
            super().__init__()
            self.weight = weight

        def compute(self, pos, neg):
            raise NotImplementedError

    assert known_mi_grid_problems("gridless") == ["gridless has parameters (weight) and declares no known_mi_grid"]
    Gridless.known_mi_grid = classmethod(lambda cls, m: [])
    assert "must be a non-empty list" in known_mi_grid_problems("gridless")[0]
    Gridless.known_mi_grid = classmethod(lambda cls, m: [{"wieght": 2.0}])
    assert "names no parameter" in known_mi_grid_problems("gridless")[0]


def test_the_documented_objective_is_one_file_listed_without_being_imported(monkeypatch, doc_example_module, capsys):
    """The "Adding an objective" example of docs/architecture.md, written into the package."""
    import sys

    from infoview.cli import main

    monkeypatch.setattr(base._OBJECTIVES, "items", dict(base._OBJECTIVES.items))
    module = doc_example_module(objectives, "Adding an objective", "decoupled")
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    assert "decoupled      Decoupled contrastive loss\n" in out and "parameters: pos_weight=1.0" in out
    assert ".mi: InfoNCE on the same scores (the decoupled loss is not a bound)" in out
    assert module not in sys.modules  # read from the file
    assert known_mi_grid_problems("decoupled") == []
    pos, neg = torch.randn(6), torch.randn(6, 5)
    out, ref = build("decoupled", pos_weight=2.0)(pos, neg), build("infonce")(pos, neg)
    assert torch.allclose(out.mi, ref.mi) and out.ceiling == ref.ceiling
    assert torch.allclose(out.loss, (torch.logsumexp(neg, 1) - 2 * pos).mean())
    with pytest.raises(ValueError, match="did you mean 'pos_weight'"):
        build("decoupled", pos_wieght=1.0)
