"""What a pretraining run continues from (``train.resume``), and which settings a resumed run may change."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from infoview.config import flatten, renamed_tree
from infoview.errors import InfoviewError
from infoview.pretrain.renamed import RENAMED
from infoview.training.checkpoint import find_resume, load_checkpoint

#: keys a resumed run may change: where and how fast it runs, how long, what it logs, not what it trains
#: (the loader's backend, where it decodes, the optimiser's kernel: the same batches and updates, up to rounding)
RESUME_MAY_CHANGE = (
    "out_dir", "train.resume", "train.allow_config_change", "train.epochs", "train.max_steps", "train.progress",
    "train.device", "train.threads", "train.log_every", "train.eval_every", "train.ckpt_every_steps",
    "train.ckpt_every_epochs",
    "data.num_workers", "data.backend", "data.decode", "data.resident_cap_gb", "data.eval_source",
    "data.eval_split", "optim.fused", "train.compile_mode", "monitor.",
)


def config_changes(saved: dict, now: dict) -> list[str]:
    """``"key: old -> new"`` for every training setting that differs between a checkpoint's config and this run's."""
    a, b = flatten(saved), flatten(now)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    return out


def saved_config(saved: dict, now: dict, path) -> dict:
    """A checkpoint's config in today's key names (:data:`RENAMED`), each old name said in one line on stderr.
    An old key that lands in a section this run has not (a distillation's config has no moco section) was
    never this run's setting, and is left out."""
    notes: list[str] = []
    renamed = renamed_tree(saved, RENAMED, f"in the config of {path}", notes)
    for old, new in RENAMED.items():
        section, _, key = new.partition(".")
        if old in flatten(saved) and section not in now and isinstance(renamed.get(section), dict):
            renamed[section].pop(key, None)
            if not renamed[section]:
                del renamed[section]
    for note in notes:
        print(f"infoview: {note}", file=sys.stderr)
    return renamed


#: train.resume values that start afresh
FRESH = ("never", "none", "", "false")


def refuse_a_finished_folder(cfg, ckpt_dir: Path) -> None:
    """train.resume=never (or another fresh start) on a folder that holds a checkpoint is an error, not an overwrite:
    checked at start by the engine, and before submission by ``infoview launch`` (a requeued job must resume)."""
    if str(cfg.train.resume).lower() in FRESH and find_resume(ckpt_dir) is not None:
        raise InfoviewError(
            f"{ckpt_dir} already holds a checkpoint and train.resume={cfg.train.resume}; continue it with "
            "train.resume=auto, or choose another out_dir"
        )


def resume_state(cfg, ckpt_dir: Path) -> tuple[Path | None, dict | None, list[str]]:
    """``(checkpoint path, its state, the settings that changed)`` for ``train.resume``; (None, None, []) for a new run.

    ``auto`` continues from ``ckpt_dir``'s last checkpoint when there is one;
    ``never`` refuses a folder that holds one; anything else is a path. A
    resumed run that changes what it trains is an error unless
    ``train.allow_config_change`` says otherwise.
    """
    t = cfg.train
    path = None
    if str(t.resume).lower() == "auto":
        path = find_resume(ckpt_dir)
    elif str(t.resume).lower() in FRESH:
        refuse_a_finished_folder(cfg, ckpt_dir)
    else:
        path = Path(str(t.resume))
    state = load_checkpoint(path) if path is not None else None
    changes: list[str] = []
    if state is not None:
        now = OmegaConf.to_container(cfg, resolve=True)
        changes = config_changes(saved_config(state.get("config") or {}, now, path), now)
        if changes and not t.allow_config_change:
            shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
            raise InfoviewError(
                f"{path} was trained with other settings ({shown}); a resumed run must keep them, "
                "or its metrics and config.yaml would describe a run that never happened. Use another out_dir "
                "for a new run, or pass train.allow_config_change=true to go on with the new settings "
                "(config.yaml then holds them, and the old one is kept beside it)"
            )
    return path, state, changes
