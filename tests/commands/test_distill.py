"""`infoview distill`: a frozen teacher distilled into a student with CRD and any objective."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from infoview.cli import main
from infoview.commands import build_config

pytestmark = pytest.mark.slow

TEACHER = ["data.source=digits", "data.batch_size=64", "optim.name=adamw", "optim.lr=0.002", "optim.ref_batch=128",
           "data.num_workers=0", "augment.size=16", "model.cifar_stem=true", "model.kwargs.channels=[8,16,32,64]",
           "model.proj_hidden=32", "model.proj_dim=16", "optim.warmup_epochs=0", "train.progress=false",
           "train.eval_every=0", "train.threads=1"]
STUDENT = ["student.arch=resnet18", "student.cifar_stem=true", "student.kwargs.channels=[4,8,16,32]",
           "augment.size=16", "data.batch_size=64", "data.num_workers=0", "crd.num_negatives=512",
           "optim.warmup_epochs=0", "train.progress=false", "train.eval_every=0", "train.threads=1",
           "train.log_every=1", "optim.name=sgd", "optim.lr=0.05", "optim.ref_batch=64",
           "crd.bank_momentum=0"]  # CRD's SGD; banks of the latest embeddings: a signal from the first epoch on


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert main(["pretrain", *TEACHER, f"out_dir={out}", "train.max_steps=60"]) == 0
    return out


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    assert main(["distill", *STUDENT, f"teacher={teacher}", f"out_dir={out}", "train.max_steps=60"]) == 0
    return out


def test_the_student_learns_and_the_teacher_never_changes(teacher, student, capsys):
    losses = _losses(student)
    assert len(losses) == 60 and sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.3  # CRD's loss falls
    result = json.loads((student / "pretrain.json").read_text())
    assert result["mi"] is not None and result["mi"] <= result["mi_ceiling"]  # the bound, under its ceiling
    state = torch.load(student / "checkpoints" / "last.pt", weights_only=False)
    taught = torch.load(teacher / "checkpoints" / "last.pt", weights_only=False)["model"]
    frozen = {k[len("teacher."):]: v for k, v in state["model"].items() if k.startswith("teacher.")}
    assert frozen and all(torch.equal(v, taught[f"encoder.{k}"]) for k, v in frozen.items())  # buffers too
    assert state["config"]["method"] == "crd" and state["config"]["crd"]["teacher"] == str(teacher.resolve())


def test_the_students_probe_beats_its_random_init_and_it_exports(student, tmp_path, capsys):
    tops = {}
    for name, spec in (("trained", str(student)), ("random", f"random:{student}")):
        assert main(["linear", f"backbone={spec}", f"out_dir={tmp_path / name}", "train.epochs=10",
                     "train.progress=false", "data.num_workers=0"]) == 0
        tops[name] = json.loads(capsys.readouterr().out)["top1"]
    assert tops["trained"] > tops["random"] + 5, tops
    assert main(["export", str(student), str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["kwargs"]["channels"] == [4, 8, 16, 32]  # the student


def test_ml_cpc_and_labels_train_too(teacher, tmp_path, capsys):
    assert main(["distill", *STUDENT, f"teacher={teacher}", f"out_dir={tmp_path / 'a'}", "train.max_steps=3",
                 "objective.name=ml_cpc", "objective.alpha=0.1", "crd.ce_weight=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and result["mi"] <= result["mi_ceiling"]
    with open(tmp_path / "a" / "metrics.csv", newline="") as f:
        assert all(float(r["online_probe_loss"]) > 0 for r in csv.DictReader(f))  # the student's cross-entropy


def test_a_run_cut_by_max_steps_decays_within_it_and_says_so(teacher, tmp_path, capsys):
    # a warm-up of 10 of the default 100 epochs (22 steps each): 220 steps, which filled the whole of a 6-step
    # run, so that it ended at its peak lr (issue 23, item 16); the warm-up now keeps its tenth of the run
    assert main(["distill", *STUDENT, f"teacher={teacher}", f"out_dir={tmp_path}", "train.max_steps=6",
                 "optim.warmup_epochs=10"]) == 0
    err = capsys.readouterr().err
    assert "train.max_steps=6 cuts the run of 2,200 steps, train.epochs=100: the warm-up takes 1 of its steps " \
           "(220 in the full run) and the decay ends at step 6" in err
    with open(tmp_path / "metrics.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["lr"]]
    peak = json.loads((tmp_path / "pretrain.json").read_text())["peak_lr"]
    assert lrs[0] == pytest.approx(peak) and lrs[-1] < 0.15 * peak, lrs  # warmed up in 1 step, then the cosine


@pytest.mark.parametrize("override, message", [
    ("teacher=/no/such/run", "teacher=/no/such/run: backbone /no/such/run: no such checkpoint file or export folder"),
    ("student.arch=resnet1888", "unknown encoder arch 'resnet1888'; did you mean 'resnet18'?"),
    ("augment.size=32", "takes 16 px images and augment.size=32: set augment.size=16"),
    ("crd.num_negatives=5000", "crd.num_negatives=1024 or fewer (drawn from the split's 1,436 other images; got 5000"),
    ("augment.num_views=2", "method=crd takes augment.num_views=1"),
])
def test_bad_input_is_a_one_line_error_before_anything_is_written(teacher, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["distill", *STUDENT, f"teacher={teacher}", f"out_dir={out}", "train.max_steps=1", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_preset_resolves_to_a_crd_run_of_the_demo_encoder():
    from infoview.commands.distill import pretrain_config

    _, cfg = build_config("distill", ["--config", "distill_digits"])
    pre = pretrain_config(cfg)
    assert pre.method == "crd" and pre.model.proj_layers == 1 and pre.model.proj_dim == pre.crd.dim == 128
    assert pre.crd.teacher.endswith("runs/demo") and pre.objective.name == "ml_cpc" and pre.augment.num_views == 1
    assert pre.data.batch_size == 128 and pre.train.epochs == 20  # the demo's budget, so that SSL alone compares
    assert pre.optim.name == "sgd" and pre.optim.lr == 0.05 and pre.optim.ref_batch == 64  # CRD's


def test_the_cifar100_preset_is_crds_own_setting_with_labels_and_its_pair():
    from infoview.commands.distill import pretrain_config
    from infoview.models import build_encoder

    _, cfg = build_config("distill", ["--config", "distill_cifar100"])
    pre = pretrain_config(cfg)
    assert pre.data.source.startswith("cifar100:") and pre.data.batch_size == 64 and pre.train.epochs == 240
    assert pre.crd.ce_weight == 1.0 and pre.crd.weight is None  # labels: CE + 0.8 CRD, negatives of other classes
    assert pre.crd.num_negatives == 16384 and pre.crd.temperature == 0.07 and pre.crd.bank_momentum == 0.5
    assert pre.objective.name == "ml_cpc" and pre.objective.alpha == 1.0  # the ML-CPC code's --cpc_alpha
    assert pre.optim.lr == 0.05 and pre.optim.ref_batch == 64 and pre.optim.weight_decay == 5e-4
    sizes = {}
    for name, layers in (("resnet8x4", [1, 1, 1, 0]), ("resnet32x4", [5, 5, 5, 0])):  # the student, the teacher
        enc = build_encoder(pre.model.arch, cifar_stem=True, kwargs={**pre.model.kwargs, "layers": layers})
        sizes[name] = round(sum(p.numel() for p in enc.parameters()) / 1e6, 2)
        with torch.no_grad():
            assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 256)
    assert sizes == {"resnet8x4": 1.23, "resnet32x4": 7.43}  # RepDistiller's resnet8x4 and resnet32x4


def test_the_cifar100_preset_trains_its_teacher_and_its_student(tmp_path, capsys):
    """Both runs its comment gives, shrunk onto digits: the teacher (cross-entropy alone, crd.weight=0)
    and then the student against that teacher, with labels."""
    shrink = ["data.source=digits", "augment.size=16", "data.num_workers=0", "crd.num_negatives=256",
              "train.max_steps=3", "train.eval_every=0", "train.progress=false", "train.threads=1",
              "monitor.max_images=0"]
    teacher = tmp_path / "teacher"
    assert main(["distill", "--config", "distill_cifar100", "teacher=random:resnet18", f"out_dir={teacher}",
                 "student.kwargs.layers=[2,1,1,0]", "student.kwargs.channels=[8,16,32,32]", "crd.weight=0",
                 *shrink]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == 0  # no distillation: the cross-entropy alone
    with open(teacher / "metrics.csv", newline="") as f:
        assert float(list(csv.DictReader(f))[-1]["online_probe_loss"]) > 0
    assert main(["distill", "--config", "distill_cifar100", f"teacher={teacher}", f"out_dir={tmp_path / 's'}",
                 "student.kwargs.channels=[4,8,16,16]", *shrink]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and result["loss"] > 0 and result["mi"] <= result["mi_ceiling"]


def test_launch_distill_checks_the_teacher_and_runs_a_job(teacher, tmp_path, capsys):
    assert main(["launch", "distill", *STUDENT, "teacher=/no/such/run", f"out_dir={tmp_path / 'x'}",
                 "launch.dry_run=true", f"launch.folder={tmp_path / 'l0'}"]) == 2
    assert "teacher=/no/such/run: no such run, checkpoint or export folder" in capsys.readouterr().err
    assert main(["launch", "distill", *STUDENT, f"teacher={teacher}", f"out_dir={tmp_path / 'run'}",
                 "train.max_steps=2", f"launch.folder={tmp_path / 'l'}", "launch.executor=local",
                 "launch.wait=true", "launch.timeout_min=5"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["jobs"][0]["state"] == "COMPLETED" and result["jobs"][0]["result"]["steps"] == 2
