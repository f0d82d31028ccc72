"""A method's needs on a split are settled in one go: every change in one error, and `infoview list methods`
names a demo-sized command for each method that trains as listed."""
from __future__ import annotations

import shlex

import pytest

from infoview.cli import main
from infoview.commands import build_config
from infoview.pretrain.methods import available_methods, get_method

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method, changes", [
    # on main: refused for its view count, then (once that was fixed) for ir.num_negatives=4096 on 1,437 images
    ("ir", ["augment.num_views=1", "ir.num_negatives=1024 or fewer (drawn from the split's 1,436 other images; "
                                   "got 4096"]),
    # ... for model.streams, then for grayscale
    ("cmc", ["augment.num_views=1", "model.streams=lab", "augment.overrides.grayscale.p=0"]),
    # ... for its view count, its objective, la.background_k, then la.k
    ("la", ["augment.num_views=1", "objective.name=infonce and no other objective.* key", "la.background_k=1024",
            "la.k=1024 or fewer (at most the split's 1,437 images; got 10000)"]),
])
def test_every_change_a_method_needs_on_the_demo_is_in_one_error(tmp_path, capsys, method, changes):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "demo", f"method={method}", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"needs {len(changes)} change(s)" in err, err
    assert all(change in err for change in changes), err
    assert "`infoview list methods`" in err and not out.exists()


def _demo(method: str) -> list[str]:
    """The command ``infoview list methods`` shows for ``method``, without its note and the ``infoview``."""
    words = shlex.split(get_method(method).demo.split("  (")[0])
    assert words[0] == "infoview", words
    return words[1:]


def test_list_methods_shows_a_command_for_every_method(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for method in available_methods():
        assert f"try: {get_method(method).demo}" in out
        assert "out_dir=" in get_method(method).demo  # never make demo's own runs/demo


@pytest.mark.parametrize("method", [m for m in available_methods() if m != "crd"])
def test_each_methods_demo_command_passes_every_check(tmp_path, method):
    """The run the command starts is built: data, views, encoder, method, optimiser, every check on the way
    (that each method then trains is tests/pretrain's business)."""
    from infoview.pretrain.engine import Trainer

    words = _demo(method)
    assert words[:3] == ["pretrain", "--config", "demo"]
    _, cfg = build_config(words[0], [*words[1:], f"out_dir={tmp_path}", "train.eval_every=0"])
    assert Trainer(cfg).method.name == method


def test_crds_demo_command_is_a_distillation_of_the_demo():
    from infoview.commands.distill import pretrain_config

    words = _demo("crd")
    _, cfg = build_config(words[0], words[1:])
    assert words[0] == "distill" and pretrain_config(cfg).method == "crd" and cfg.teacher == "runs/demo"
