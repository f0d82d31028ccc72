"""The encoder a config or a pretraining checkpoint describes: one builder for pretraining, export and evaluators."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from infoview.augment.recipes import normalization
from infoview.errors import ConfigError, InfoviewError
from infoview.models import build_encoder
from infoview.models.encoder import architecture_kwargs
from infoview.training.checkpoint import load_checkpoint


def build_encoder_from_config(model_cfg, size: int, normalize: str | None = None, where: str = "model.kwargs"):
    """The encoder a config's ``model`` section describes at input size ``size``.

    ``model.kwargs`` may hold architecture keyword arguments only (``where`` names them in the error):
    timm's loading keys (``pretrained``, ``checkpoint_path``, ...) are refused, so a config or a checkpoint
    from elsewhere cannot make timm fetch or open anything.

    ``normalize``: the ``augment.normalize`` preset its input is normalised with. Only a
    ``model.streams=lab`` encoder (CMC's L and ab halves) needs it, to undo it before the Lab conversion;
    a config written before ``model.streams`` existed is ``rgb``.
    """
    raw = model_cfg.get("kwargs") or {}
    kwargs = architecture_kwargs(model_cfg["arch"], dict(raw) if hasattr(raw, "items") else raw, where)
    streams = str(model_cfg.get("streams") or "rgb")
    if streams != "rgb":
        if not normalize:
            raise ConfigError(f"model.streams={streams} undoes the input's normalisation: give augment.normalize")
        mean, std = normalization(normalize, None, None)
        kwargs.update(streams=streams, input_mean=mean, input_std=std)
    return build_encoder(model_cfg["arch"], cifar_stem=bool(model_cfg["cifar_stem"]), img_size=int(size), **kwargs)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the file a run folder holds (``checkpoints/last.pt`` or ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoints/last.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
    return path


def encoder_from_checkpoint(path: str | os.PathLike, trained: bool = True, state: dict | None = None):
    """``(Encoder, checkpoint state)``: the encoder a pretraining checkpoint describes.

    ``trained=True`` loads the checkpoint's encoder weights; ``trained=False``
    rebuilds the weights the run started from (global RNG seeded with the
    run's ``train.seed``, as pretraining did). Missing, empty or truncated
    files are the errors of :func:`infoview.training.checkpoint.load_checkpoint`.
    """
    path = Path(path)
    if state is None:
        state = load_checkpoint(path)
    cfg = state["config"]
    torch.manual_seed(int(cfg["train"]["seed"]))  # what the pretraining run started from
    encoder = build_encoder_from_config(cfg["model"], int(cfg["augment"]["size"]), cfg["augment"].get("normalize"),
                                        where=f"checkpoint {path}: model.kwargs")
    if trained:
        prefix = "encoder."
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise InfoviewError(
                f"checkpoint {path}: encoder weights do not fit {encoder.arch} "
                f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
    return encoder, state
