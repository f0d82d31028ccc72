"""method=cmc: L against ab, the two-stream Lab encoder, its banks, evaluation and export of its checkpoints.

Training runs use a small folder of colour images (a square of one colour on a background of another): the
digits are grey, so their ab channels are constant and hold nothing for L to be contrasted with.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from infoview.cli import main
from infoview.objectives import build

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
COLOUR = ["model.streams=lab", "method=cmc", "augment.num_views=1", "augment.recipe=mocov2",
          "augment.overrides.jitter.p=0", "augment.overrides.grayscale.p=0", "data.batch_size=32",
          "optim.lr=0.3", "train.log_every=2"]


def run(tiny, folder, out, *extra) -> list[dict]:
    assert main(["pretrain", *tiny, *COLOUR, f"data.source=folder:{folder}", f"out_dir={out}", *extra]) == 0
    with open(out / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def lab_encoder(arch="resnet18", **kw):
    from infoview.models import build_encoder

    kw = kw or dict(cifar_stem=True, channels=[8, 16, 32, 64])
    return build_encoder(arch, streams="lab", input_mean=IMAGENET[0], input_std=IMAGENET[1], **kw)


def make_cmc(objective="infonce", negatives="bank", **kw):
    """CMC on one-block ViT halves (no BatchNorm, whose per-rank statistics would differ under DDP)."""
    from infoview.models import projector
    from infoview.pretrain.methods.cmc import CMC

    torch.manual_seed(0)
    enc = lab_encoder("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    heads = [projector(d, 32, 16, num_layers=2, bn=False) for d in (32, 32)]
    params = {"ml_cpc": {"alpha": 0.5}}.get(objective, {})
    return CMC(enc, *heads, build(objective, **params), temperature=0.5, negatives=negatives, num_negatives=8,
               num_samples=32, seed=3, **kw)


def test_the_lab_split_of_known_colours_and_gradients_reach_both_halves():
    enc = lab_encoder()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).view(2, 3, 1, 1).expand(2, 3, 4, 4)
    lab = enc.backbone.to_lab((rgb - mean) / std)  # what the encoder gets: normalised RGB
    # sRGB red is L* 53.24, a* 80.09, b* 67.20; a grey has a* = b* = 0. Scaled as CMC scales them
    red = torch.tensor([(53.24 - 50) / 50, (80.09 - 6.025) / 92.208, (67.20 + 6.6895) / 101.1675])
    torch.testing.assert_close(lab[0, :, 0, 0], red, atol=2e-3, rtol=0)
    torch.testing.assert_close(lab[1, 1:, 0, 0], torch.tensor([-6.025 / 92.208, 6.6895 / 101.1675]), atol=1e-3,
                               rtol=0)
    assert enc.backbone.l.conv1.in_channels == 1 and enc.backbone.ab.conv1.in_channels == 2
    assert enc.feature_dim == 128 and enc(torch.randn(2, 3, 16, 16)).shape == (2, 128)  # 64 + 64, side by side
    for negatives in ("bank", "batch"):
        method = make_cmc(negatives=negatives)
        out = method([torch.randn(8, 3, 16, 16)], None, torch.arange(8))
        out.loss.backward()
        for part in ("encoder.backbone.l.", "encoder.backbone.ab.", "projector.", "projector_ab."):
            grads = [p.grad for n, p in method.named_parameters() if n.startswith(part)]
            assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
        assert out.mi <= out.ceiling


@pytest.mark.parametrize("negatives,objective", [("bank", "infonce"), ("batch", "infonce"), ("bank", "ml_cpc")])
def test_the_loss_falls_and_mi_stays_under_its_ceiling(tiny, colour_folder, tmp_path, negatives, objective):
    rows = run(tiny, colour_folder, tmp_path, "train.max_steps=24", f"cmc.negatives={negatives}",
               "cmc.num_negatives=32", f"objective.name={objective}")
    loss = [r["loss"] for r in rows]
    assert np.mean(loss[-3:]) < loss[0] - 1.0, loss
    assert all(r["mi"] <= r["mi_ceiling"] + 1e-6 for r in rows)
    assert rows[-1]["mi_ceiling"] == pytest.approx(np.log(32), abs=1e-5)  # the global batch's cross-view matrix
    assert np.mean([r["mi"] for r in rows[-3:]]) > rows[0]["mi"]


def test_eval_and_export_rebuild_the_two_stream_encoder(tiny, colour_folder, tmp_path, capsys):
    from infoview.backbones.encoder import encoder_from_checkpoint
    from infoview.backbones.export import load_backbone

    run(tiny, colour_folder, tmp_path / "run", "train.max_steps=4", "cmc.num_negatives=16",
        "augment.normalize=cifar10")
    capsys.readouterr()
    assert main(["knn", f"backbone={tmp_path / 'run'}", "data.source=digits", "data.num_workers=0",
                 "train.progress=false", f"out_dir={tmp_path / 'knn'}"]) == 0
    knn = json.loads(capsys.readouterr().out)
    assert 0 <= knn["top1"] <= 100 and knn["feature_dim"] == 128
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["streams"] == "lab" and not config["plain_timm_loadable"] and config["normalize"] == "cifar10"
    encoder, _ = encoder_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(tmp_path / "export")(x), encoder.eval()(x))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "tv"), "format=torchvision"]) == 2
    assert "format=timm" in capsys.readouterr().err and not (tmp_path / "tv" / "model.safetensors").exists()


def test_the_banks_are_checkpointed_and_a_resumed_run_draws_what_an_unbroken_one_does(tiny, colour_folder, tmp_path):
    common = ["cmc.num_negatives=16", "data.batch_size=16", "train.ckpt_every_steps=2", "train.max_steps=6"]
    run(tiny, colour_folder, tmp_path / "whole", *common)
    earlier = tmp_path / "whole" / "checkpoints" / "prev.pt"
    before = torch.load(earlier, weights_only=True)
    assert 0 < before["step"] < 6
    run(tiny, colour_folder, tmp_path / "resumed", *common, f"train.resume={earlier}")
    whole, resumed = (torch.load(tmp_path / p / "checkpoints" / "last.pt", weights_only=True)["model"]
                      for p in ("whole", "resumed"))
    for key in ("bank_l.bank", "bank_ab.bank"):
        assert whole[key].shape == (64, 16) and not torch.equal(before["model"][key], whole[key])
        torch.testing.assert_close(resumed[key], whole[key])
    torch.testing.assert_close(resumed["projector.0.weight"], whole["projector.0.weight"])


def test_a_run_that_cannot_be_cmc_is_refused_in_one_line(tiny, colour_folder, tmp_path, capsys):
    base = [*tiny, *COLOUR, f"data.source=folder:{colour_folder}", "train.max_steps=1"]
    for extra, expected in ((["model.streams=rgb"], "model.streams=lab"),
                            (["augment.overrides.grayscale.p=0.2"], "augment.overrides.grayscale.p=0")):
        assert main(["pretrain", *base, *extra, f"out_dir={tmp_path / extra[0]}"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------- DDP

BATCH, WORLD = 8, 2
CASES = [("bank", "ml_cpc"), ("batch", "infonce")]  # the pooled rows with the draws; the gather with gradients


def _grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}


def _on_rank(rank: int, data_file: str) -> dict:
    x, idx = torch.load(data_file)
    b = BATCH // WORLD
    results = {}
    for negatives, objective in CASES:
        method = make_cmc(objective, negatives)
        ddp = torch.nn.parallel.DistributedDataParallel(method)
        out = ddp([x[rank * b:(rank + 1) * b]], None, idx[rank * b:(rank + 1) * b])
        out.loss.backward()
        name = f"{negatives}:{objective}"
        results[name] = _grads(method)
        results[name + ":figures"] = [out.mi.item(), out.ceiling, out.mi_estimate.item()]
        results[name + ":banks"] = [getattr(method, k).bank.clone() for k in ("bank_l", "bank_ab")
                                    if hasattr(method, k)]
        del ddp
    return results


@pytest.mark.slow
def test_two_ranks_give_the_single_process_gradient(tmp_path, gloo_ranks):
    torch.manual_seed(1)
    data = (torch.randn(BATCH, 3, 16, 16), torch.randperm(32)[:BATCH])
    torch.save(data, tmp_path / "data.pt")
    ddp = gloo_ranks(_on_rank, str(tmp_path / "data.pt"), world=WORLD)[0]
    for negatives, objective in CASES:
        name = f"{negatives}:{objective}"
        method = make_cmc(objective, negatives)
        out = method([data[0]], None, data[1])  # one process, the whole batch
        out.loss.backward()
        ref = _grads(method)
        assert ref.keys() == ddp[name].keys()
        for key, g in ref.items():
            torch.testing.assert_close(ddp[name][key], g, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
        mi, ceiling, estimate = ddp[name + ":figures"]
        assert mi == pytest.approx(out.mi.item(), rel=1e-5, abs=1e-6) and ceiling == out.ceiling, name
        if objective == "ml_cpc":  # pooled: the global value on each rank
            assert estimate == pytest.approx(out.mi_estimate.item(), rel=1e-5, abs=1e-6), name
        banks = [getattr(method, k).bank for k in ("bank_l", "bank_ab") if hasattr(method, k)]
        assert len(banks) == len(ddp[name + ":banks"]) == (2 if negatives == "bank" else 0)
        for mine, theirs in zip(banks, ddp[name + ":banks"]):  # updated from the gathered batch on every rank
            torch.testing.assert_close(theirs, mine)


def test_detection_and_segmentation_refuse_the_two_streams_naming_what_scores_them():
    from omegaconf import OmegaConf

    from infoview.backbones.encoder import build_encoder_from_config
    from infoview.errors import InfoviewError
    from infoview.eval.detection.model import build_detector
    from infoview.eval.segmentation.model import _timm_model

    model = OmegaConf.create({"arch": "resnet18", "cifar_stem": True, "kwargs": {"channels": [8, 16, 32, 64]},
                              "streams": "lab"})
    encoder = build_encoder_from_config(model, 16, "imagenet")
    for call, task in ((lambda: build_detector(encoder, "bbox", 2, IMAGENET[0], IMAGENET[1], None, False),
                        "detection"), (lambda: _timm_model(encoder), "segmentation")):
        with pytest.raises(InfoviewError, match=rf"^{task} takes one timm network's stages, and this backbone is "
                                                r"CMC's two .*`infoview linear` or `infoview knn`"):
            call()
