"""`infoview export`: model.safetensors + config.json, loaded back by load_backbone, plain timm and torchvision."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infoview.augment.recipes import normalization
from infoview.backbones.export import WEIGHTS, export_backbone, load_backbone
from infoview.backbones.spec import load_backbone_spec
from infoview.cli import main
from infoview.errors import InfoviewError
from infoview.models import build_encoder
from infoview.training.checkpoint import load_checkpoint, save_checkpoint


def features(model, size, n=3, seed=0):
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def built_checkpoint(template: Path, path: Path, arch: str, size: int = 32, **kwargs) -> Path:
    """A checkpoint like ``template`` (a tiny pretraining run) whose encoder is ``arch`` at random init."""
    state = load_checkpoint(template)
    state.pop("format")
    cfg = copy.deepcopy(state["config"])
    cfg["model"].update(arch=arch, cifar_stem=False, kwargs=kwargs)
    cfg["augment"]["size"] = size
    torch.manual_seed(1)
    encoder = build_encoder(arch, img_size=size, **kwargs)
    with torch.no_grad():  # running statistics that are not the defaults, so BN matters
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    state.update(config=cfg, model={f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def cifar_export(cifar_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "cifar"
    export_backbone(cifar_checkpoint, out)
    return out


@pytest.fixture(scope="module")
def photo_export(photo_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "photo"
    export_backbone(photo_checkpoint, out)
    return out


@pytest.fixture(scope="module")
def standard_resnet18(photo_checkpoint, tmp_path_factory) -> Path:
    """A standard-width ResNet-18 checkpoint (torchvision's widths), built from the photo run's state."""
    return built_checkpoint(photo_checkpoint, tmp_path_factory.mktemp("std") / "last.pt", "resnet18")


def test_round_trip(cifar_checkpoint, cifar_export):
    import timm
    from safetensors.torch import load_file

    assert sorted(p.name for p in cifar_export.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    state = load_checkpoint(cifar_checkpoint)
    cfg = json.loads((cifar_export / "config.json").read_text())
    mean, std = normalization("imagenet", None, None)
    assert cfg["arch"] == "resnet18" and cfg["cifar_stem"] is True and cfg["img_size"] == 16
    assert cfg["kwargs"] == {"channels": [8, 16, 32, 64]} and cfg["feature_dim"] == 64
    assert cfg["input_size"] == [3, 16, 16] and cfg["mean"] == list(mean) and cfg["std"] == list(std)
    assert cfg["pretrained_cfg"]["num_classes"] == 0 and cfg["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert cfg["pretrain_config"] == state["config"] and cfg["metrics"] == state["metrics"]
    assert cfg["source"]["step"] == 2 and cfg["source"]["checkpoint"] == str(cifar_checkpoint.resolve())
    assert {"git_commit", "time", "infoview_version"} <= set(cfg["provenance"])
    assert cfg["plain_timm_loadable"] is False and "cifar_stem" in cfg["plain_timm_note"]

    reference = load_backbone_spec(str(cifar_checkpoint)).encoder  # the checkpoint's encoder
    weights = load_file(str(cifar_export / WEIGHTS))
    assert set(weights) == set(reference.backbone.state_dict())  # timm's key names, backbone only
    model = load_backbone(cifar_export)
    assert isinstance(model, timm.models.ResNet) and model.num_classes == 0 and not model.training
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)
    assert torch.equal(features(model, 16), features(reference, 16))


def test_plain_timm_loads_a_standard_stem_export(photo_checkpoint, photo_export):
    import timm

    cfg = json.loads((photo_export / "config.json").read_text())
    assert cfg["plain_timm_loadable"] is True and "plain_timm_note" not in cfg
    assert cfg["timm_kwargs"] == {"channels": [8, 16, 32, 64]}
    file = str(photo_export / WEIGHTS)
    ours = features(load_backbone(photo_export), 32)
    assert torch.equal(ours, features(load_backbone_spec(str(photo_checkpoint)).encoder, 32))
    # timm drops fc.* (absent here) and loads the rest; with the pretrained_cfg block num_classes=0
    # matches, so timm loads strictly
    for overlay in (dict(file=file), dict(file=file, **cfg["pretrained_cfg"])):
        plain = timm.create_model(cfg["arch"], pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0,
                                  **cfg["timm_kwargs"])
        assert torch.equal(features(plain, 32), ours)
    assert list(timm.data.resolve_data_config(model=plain)["mean"]) == cfg["mean"]


def test_plain_timm_cannot_rebuild_the_cifar_stem_but_load_backbone_can(cifar_export):
    import timm

    cfg = json.loads((cifar_export / "config.json").read_text())
    with pytest.raises(RuntimeError, match="size mismatch"):
        timm.create_model(cfg["arch"], pretrained=True, pretrained_cfg_overlay=dict(file=str(cifar_export / WEIGHTS)),
                          num_classes=0, **cfg["timm_kwargs"])
    assert load_backbone(cifar_export).conv1.kernel_size == (3, 3)


def test_a_vit_export_loads_in_plain_timm_with_its_img_size(photo_checkpoint, tmp_path):
    import timm

    ckpt = built_checkpoint(photo_checkpoint, tmp_path / "vit.pt", "vit_tiny_patch16_224", size=32, depth=1)
    export_backbone(ckpt, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["plain_timm_loadable"] is True and cfg["timm_kwargs"] == {"depth": 1, "img_size": 32}
    plain = timm.create_model(cfg["arch"], pretrained=True, num_classes=0, **cfg["timm_kwargs"],
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "out" / WEIGHTS)))
    assert torch.equal(features(plain, 32), features(load_backbone(tmp_path / "out"), 32))
    with pytest.raises(InfoviewError, match="arch 'vit_tiny_patch16_224' has no torchvision counterpart"):
        export_backbone(ckpt, tmp_path / "tv", format="torchvision")


def test_torchvision_format(standard_resnet18, tmp_path):
    import torchvision
    from safetensors.torch import load_file

    summary = export_backbone(standard_resnet18, tmp_path / "tv", format="torchvision")
    assert summary["format"] == "torchvision" and summary["feature_dim"] == 512
    cfg = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert cfg["weights_format"] == "torchvision" and cfg["torchvision"]["builder"] == "torchvision.models.resnet18"
    tv = torchvision.models.resnet18(num_classes=7)
    result = tv.load_state_dict(load_file(str(tmp_path / "tv" / WEIGHTS)), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    tv.fc = torch.nn.Identity()
    ours = features(load_backbone(tmp_path / "tv"), 32)
    assert ours.shape == (3, 512)
    assert torch.equal(features(tv, 32), ours)
    assert torch.equal(ours, features(load_backbone_spec(str(standard_resnet18)).encoder, 32))


def test_torchvision_format_refuses_what_torchvision_cannot_hold(photo_checkpoint, cifar_checkpoint, tmp_path):
    with pytest.raises(InfoviewError, match=r"widths are fixed.*channels"):
        export_backbone(photo_checkpoint, tmp_path / "a", format="torchvision")
    with pytest.raises(InfoviewError, match="CIFAR stem"):
        export_backbone(cifar_checkpoint, tmp_path / "b", format="torchvision")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_refuses_a_non_empty_folder_unless_overwrite(cifar_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    export_backbone(cifar_checkpoint, out)  # an empty folder is fine
    (out / "notes.txt").write_text("mine")
    before = (out / WEIGHTS).stat().st_mtime_ns
    assert main(["export", str(cifar_checkpoint), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty (holds config.json, model.safetensors, notes.txt)" in err and "overwrite=true" in err
    assert (out / WEIGHTS).stat().st_mtime_ns == before
    assert main(["export", str(cifar_checkpoint.parent.parent), str(out), "overwrite=true"]) == 0  # a run folder
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 2 and printed["plain_timm_loadable"] is False
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(InfoviewError, match="is a file"):
        export_backbone(cifar_checkpoint, out / "notes.txt")


def test_missing_or_truncated_checkpoint(cifar_checkpoint, tmp_path):
    with pytest.raises(InfoviewError, match="does not exist"):
        export_backbone(tmp_path / "nothing.pt", tmp_path / "out")
    bad = tmp_path / "cut" / "last.pt"
    bad.parent.mkdir()
    data = cifar_checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InfoviewError, match="truncated or corrupt"):
        export_backbone(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_format(cifar_checkpoint, tmp_path, capsys):
    with pytest.raises(InfoviewError, match="did you mean 'torchvision'.*Formats: timm, torchvision"):
        export_backbone(cifar_checkpoint, tmp_path / "out", format="torchvison")
    assert main(["export", str(cifar_checkpoint), str(tmp_path / "out"), "format=onnx"]) == 2
    assert "unknown export format 'onnx'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_export_folder_is_a_clear_error(cifar_export, tmp_path):
    with pytest.raises(InfoviewError, match="does not exist"):
        load_backbone(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((cifar_export / "config.json").read_text())
    with pytest.raises(InfoviewError, match="model.safetensors is missing"):
        load_backbone(partial)
    with pytest.raises(InfoviewError, match="model.safetensors is missing"):
        load_backbone_spec(str(partial))
    data = (cifar_export / WEIGHTS).read_bytes()
    (partial / WEIGHTS).write_bytes(data[: len(data) - 100])
    with pytest.raises(InfoviewError, match="sha256"):
        load_backbone(partial)


@pytest.mark.parametrize("kwarg, value", [("pretrained", True), ("checkpoint_path", "README.md"),
                                          ("pretrained_cfg_overlay", {"url": "https://example.com/w.pth"}),
                                          ("cache_dir", "/tmp/elsewhere"), ("features_only", True)])
def test_an_export_steers_timm_with_architecture_kwargs_only(cifar_export, tmp_path, capsys, monkeypatch, kwarg,
                                                             value):
    """An export's config.json is data: a timm loading key in its kwargs is refused before timm sees it."""
    import timm

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / WEIGHTS).write_bytes((cifar_export / WEIGHTS).read_bytes())
    config = json.loads((cifar_export / "config.json").read_text())
    config["kwargs"][kwarg] = value
    config["pretrain_config"]["model"]["kwargs"][kwarg] = value
    (hostile / "config.json").write_text(json.dumps(config))
    built = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: built.append(kw) or real(*a, **kw))
    for spec in (str(hostile), f"random:{hostile}"):
        assert main(["knn", f"backbone={spec}", f"out_dir={tmp_path / 'knn'}", "data.num_workers=0",
                     "train.progress=false"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{kwarg}' is not an architecture keyword argument" in err, err
        assert str(hostile / "config.json") in err
    assert not any(kwarg in kw for kw in built)
    assert not (tmp_path / "knn").exists()


@pytest.mark.parametrize("where", ["a file", "/proc", "/proc/self"])
def test_an_export_folder_that_cannot_be_written_is_one_line_naming_it(cifar_checkpoint, tmp_path, capsys, where):
    """As root (CI), chmod stops nothing: a file in the folder's place, and /proc (read-only to everyone)."""
    out = {"a file": tmp_path / "file" / "export", "/proc": Path("/proc/infoview-test/export"),
           "/proc/self": Path("/proc/self")}[where]
    (tmp_path / "file").write_text("")
    assert main(["export", str(cifar_checkpoint), str(out), "overwrite=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err, err


def test_a_full_disk_while_exporting_is_one_line_and_leaves_the_previous_export_or_nothing(
        cifar_checkpoint, cifar_export, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):  # safetensors' own words over a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    fresh = tmp_path / "new" / "export"
    assert main(["export", str(cifar_checkpoint), str(fresh)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"infoview export: error: cannot write {fresh / WEIGHTS} (No space left on device)"]
    assert not (tmp_path / "new").exists()  # no half-made export folder
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in (WEIGHTS, "config.json"):
        (previous / name).write_bytes((cifar_export / name).read_bytes())
    assert main(["export", str(cifar_checkpoint), str(previous), "overwrite=true"]) == 2
    assert "the previous model.safetensors there is kept as it was" in capsys.readouterr().err
    assert sorted(p.name for p in previous.iterdir()) == ["config.json", WEIGHTS]
    assert torch.equal(features(load_backbone(previous), 16), features(load_backbone(cifar_export), 16))


def test_evaluators_accept_an_export_and_its_random_init(cifar_checkpoint, cifar_export, tmp_path, capsys):
    exported = load_backbone_spec(str(cifar_export))
    trained = load_backbone_spec(str(cifar_checkpoint))
    assert (exported.size, exported.normalize, exported.encoder.feature_dim) == (16, "imagenet", 64)
    assert exported.pretrain_config == trained.pretrain_config and "exported" in exported.description
    assert torch.equal(features(exported.encoder, 16), features(trained.encoder, 16))
    random_export = load_backbone_spec(f"random:{cifar_export}").encoder.state_dict()
    random_ckpt = load_backbone_spec(f"random:{cifar_checkpoint}").encoder.state_dict()
    assert all(torch.equal(random_export[k], v) for k, v in random_ckpt.items())
    assert any(not torch.equal(exported.encoder.state_dict()[k], v) for k, v in random_ckpt.items()
               if v.is_floating_point())

    common = ["data.num_workers=0", "train.progress=false"]
    assert main(["knn", f"backbone={cifar_export}", f"out_dir={tmp_path / 'knn'}", *common]) == 0
    knn = json.loads(capsys.readouterr().out)
    assert knn["backbone"].startswith("exported") and knn["num_test"] == 360
    assert main(["linear", f"backbone=random:{cifar_export}", f"out_dir={tmp_path / 'lin'}", "train.epochs=2",
                 *common]) == 0
    linear = json.loads(capsys.readouterr().out)
    assert "random init" in linear["backbone"] and linear["feature_dim"] == 64


def test_importing_infoview_models_stays_light():
    light = ("import sys, infoview.models; "
             "print([k for k in ('timm', 'safetensors', 'torchvision') if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import infoview.models as models

    with pytest.raises(AttributeError):  # exports live a layer up, in infoview.backbones.export
        models.load_backbone  # noqa: B018
