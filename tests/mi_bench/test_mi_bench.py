"""`infoview mi-bench`: outputs, errors, seeding, and that the critics learn."""
import csv
import json
import math

import pytest

from infoview.cli import main
from infoview.commands.mi_bench import DEFAULTS
from infoview.schema import defaults

# a tiny critic and a few steps: seconds on two CPU cores
TINY = ["train.steps_per_level=6", "data.batch_size=16", "model.hidden=32", "model.embed_dim=8", "data.levels=[2,4]",
        "train.threads=1"]
#: the same, by the flat names of main
TINY_ON_MAIN = ["steps_per_level=6", "batch_size=16", "hidden=32", "embed_dim=8", "levels=[2,4]", "threads=1"]


def _run(tmp_path, *args, name="run"):
    out = tmp_path / name
    rc = main(["mi-bench", f"out_dir={out}", *args])
    return rc, out


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_outputs_and_schema(tmp_path, capsys):
    rc, out = _run(tmp_path, *TINY, "estimators=infonce,ml_cpc,ml_cpc:alpha=0.1,ml_cpc:alpha=0.0001,nwj,js")
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["estimates"] == _results(out)["estimates"]

    r = _results(out)
    assert r["batch_size"] == 16
    assert r["levels"] == [2, 4]
    assert list(r["estimates"]) == ["infonce", "ml_cpc", "ml_cpc(alpha=0.1)", "ml_cpc(alpha=0.0001)", "nwj", "js"]
    for key, values in r["estimates"].items():
        assert len(values) == 2, key
        assert all(v is not None and math.isfinite(v) for v in values), key
    assert r["estimators"]["ml_cpc(alpha=0.1)"]["params"] == {"alpha": 0.1}
    # the top-level alpha key, `floor` by default: ML-CPC's smallest valid alpha for a 16 x 16 matrix
    assert defaults(DEFAULTS)["alpha"] == "floor"
    assert r["estimators"]["ml_cpc"]["params"] == {"alpha": pytest.approx(16 / (16 * 15 + 1))}
    assert r["log_m"] == pytest.approx(math.log(16), abs=1e-4)
    # each bound's ceiling; alpha = 1e-4 is below the floor, so it is certified at the floor ...
    assert r["ceilings"]["infonce"] == pytest.approx(math.log(16)) and r["ceilings"]["nwj"] is None
    assert r["ceilings"]["ml_cpc"] == r["ceilings"]["ml_cpc(alpha=0.0001)"] == pytest.approx(math.log(241))
    assert r["ceilings"]["ml_cpc(alpha=0.1)"] == pytest.approx(math.log(160))
    # ... and its training value is kept apart, as an estimate, for it alone
    assert list(r["uncertified"]) == ["ml_cpc(alpha=0.0001)"]

    # InfoNCE never certifies more than log(batch_size), per level and per step
    eps = 1e-4
    assert max(r["estimates"]["infonce"]) <= math.log(16) + eps
    with open(out / "estimates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert all(float(row["infonce"]) <= math.log(16) + eps for row in rows)
    assert all(float(row["ml_cpc(alpha=0.0001)"]) <= math.log(241) + eps for row in rows)
    assert all(row["ml_cpc(alpha=0.0001) [estimate]"] for row in rows)
    assert [float(rows[i]["true_mi"]) for i in (0, 6)] == [2, 4]

    assert (out / "mi_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps_per_level: 6" in (out / "config.yaml").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unknown_estimator_is_an_error_before_training(tmp_path, capsys):
    rc, out = _run(tmp_path, *TINY, "estimators=infonce,bogus_nce")
    assert rc == 2
    err = capsys.readouterr().err
    assert "bogus_nce" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_estimator_parameter_is_an_error(tmp_path, capsys):
    rc, out = _run(tmp_path, *TINY, "estimators=ml_cpc:beta=2")
    assert rc == 2
    err = capsys.readouterr().err
    assert "beta" in err and "alpha" in err
    assert not out.exists()


def test_bad_critic_is_an_error(tmp_path, capsys):
    rc, _ = _run(tmp_path, *TINY, "model.critic=bilinear")
    assert rc == 2
    assert "separable" in capsys.readouterr().err


def test_parse_estimators_keys_and_params():
    from infoview.errors import ConfigError
    from infoview.mi_bench.estimators import parse_estimators

    specs = parse_estimators(
        ["infonce", "ml_cpc", "ml_cpc:alpha=1e-3", "ml_cpc(alpha=0.5)", {"name": "ml_cpc", "alpha": 2.0}],
        {"alpha": 0.25},
    )
    assert [s.key for s in specs] == [
        "infonce", "ml_cpc", "ml_cpc(alpha=0.001)", "ml_cpc(alpha=0.5)", "ml_cpc(alpha=2.0)",
    ]
    assert [s.built_with for s in specs] == [{}, {"alpha": 0.25}, {"alpha": 0.001}, {"alpha": 0.5}, {"alpha": 2.0}]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_estimators(["infonce", "infonce"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_estimators(["ml_cpc:0.1"])


def test_same_seed_same_results(tmp_path):
    args = [*TINY, "estimators=infonce,nwj", "model.critic=concat", "data.batch_size=8"]
    assert _run(tmp_path, *args, "train.seed=3", name="a")[0] == 0
    assert _run(tmp_path, *args, "train.seed=3", name="b")[0] == 0
    assert _run(tmp_path, *args, "train.seed=4", name="c")[0] == 0
    a, b, c = (_results(tmp_path / n)["estimates"] for n in "abc")
    assert a == b
    assert a != c


def test_the_flat_keys_of_main_still_run_alike_each_with_a_note(tmp_path, capsys):
    assert _run(tmp_path, *TINY, "estimators=infonce", name="new")[0] == 0
    capsys.readouterr()
    assert _run(tmp_path, *TINY_ON_MAIN, "estimators=infonce", "seed=0", name="old")[0] == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if " is now " in line]
    assert len(notes) == 7 and "infoview mi-bench: steps_per_level is now train.steps_per_level" in notes[0]
    new, old = _results(tmp_path / "new"), _results(tmp_path / "old")
    assert new["estimates"] == old["estimates"] and new["steps_per_level"] == old["steps_per_level"] == 6


def test_staircase_rho_gives_the_level():
    from infoview.mi_bench.critics import rho_for, true_mi

    for mi in (0.5, 2, 10):
        assert true_mi(rho_for(mi, 20), 20) == pytest.approx(mi)


def test_critics_learn_the_staircase(tmp_path):
    # full-size critics, 300 steps per level. Measured over seeds 0-4 on CPU:
    # infonce reaches 1.60-1.65 nats at level 2 (an untrained critic gives ~0)
    # and 3.54-3.57 at level 6; ML-CPC with alpha = 0.01 reaches 1.56-1.65 and
    # 3.77-4.03.
    rc, out = _run(
        tmp_path, "train.steps_per_level=300", "data.levels=[2,6]", "estimators=infonce,ml_cpc", "alpha=0.01",
        "train.seed=1"
    )
    assert rc == 0
    est = _results(out)["estimates"]
    inf, ml = est["infonce"], est["ml_cpc"]
    assert inf[0] > 1.2
    assert inf[1] > inf[0] + 1.4
    assert inf[1] <= math.log(64) + 1e-4
    assert ml[0] > 1.2
    assert ml[1] > ml[0] + 1.6
    assert all(v < true for v, true in zip(inf + ml, [2, 6, 2, 6]))
