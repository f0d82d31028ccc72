"""Export a pretrained backbone: `infoview export CKPT OUT_DIR [format=timm|torchvision] [overwrite=true]`.

Writes the encoder of a pretraining checkpoint (CKPT: a checkpoint file, or
a run folder holding checkpoints/last.pt), without projector, probe, momentum
encoder or optimiser, to OUT_DIR:

- model.safetensors: the backbone's weights alone, the state_dict of the timm
  model (num_classes=0) with timm's key names (format=timm), or with
  torchvision's ResNet key names (format=torchvision: torchvision's resnet18,
  resnet34, resnet50, ... then load it with only fc.* missing);
- config.json: the timm arch and the kwargs that rebuild it, cifar_stem,
  img_size, the feature dim, the input size and normalisation mean/std, the
  pretraining config, the checkpoint's metrics, the source checkpoint and its
  step, provenance, and (format=timm) a timm pretrained_cfg block.

Both files are written atomically (a temp name, then a rename; config.json
last, with the weights' sha256). OUT_DIR must be empty or new unless
overwrite=true.

Load it back with infoview.load_backbone(OUT_DIR) (a timm model with
the exported weights), with backbone=OUT_DIR in any evaluator, or, for a
standard stem, with plain timm:
  timm.create_model(arch, pretrained=True, num_classes=0, **timm_kwargs,
                    pretrained_cfg_overlay=dict(file="OUT_DIR/model.safetensors"))
A CIFAR stem (cifar_stem=true on a ResNet) is not something timm.create_model
can rebuild: config.json says so (plain_timm_loadable: false) and
load_backbone handles it. Neither can it rebuild a model.streams=lab encoder
(CMC's two networks, on L and on ab, behind an RGB -> Lab conversion; its
weights are l.* and ab.*): config.json records streams: lab, and
load_backbone and backbone=OUT_DIR rebuild it; format=torchvision refuses it.

Example: infoview export runs/demo runs/demo/export
"""
from __future__ import annotations

from typing import Any

from infoview.commands import Command
from infoview.schema import Key

DEFAULTS: dict[str, Any] = {
    "ckpt": Key("", "CKPT: a pretraining checkpoint, or a run folder holding checkpoints/last.pt"),
    "out": Key("", "OUT_DIR: where model.safetensors and config.json go (empty or new)"),
    # no choices: export_backbone's error names the nearest format ("unknown export format 'x'")
    "format": Key("timm", "the weights' key names: timm, or torchvision (its ResNets only)"),
    "overwrite": Key(False, "write into an OUT_DIR that is not empty"),
}
COMMAND = Command(help="Export a checkpoint's backbone: model.safetensors (timm key names) + config.json.", positional=("ckpt", "out"))


def run(cfg) -> dict:
    from infoview.backbones.export import export_backbone

    return export_backbone(cfg.ckpt, cfg.out, format=cfg.format, overwrite=cfg.overwrite)
