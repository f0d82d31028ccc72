"""What `infoview linear` and `infoview knn` share: their help on the backbone and data, and those keys."""
from __future__ import annotations

from typing import Any

from infoview.data.choices import BACKENDS as LOADER_BACKENDS
from infoview.schema import Key

#: what `infoview linear --help` and `infoview knn --help` say about the keys they share
FROZEN_HELP = """backbone: a pretraining checkpoint (or its run folder), an export folder
(infoview export), random:<checkpoint or export> (the same encoder at its
initial weights: the baseline of that run), or random:<timm arch>.

data.source: the data to measure on; when not given, the data the backbone was
pretrained on (its run records it; said on stderr). data.test_source: where
the held-out split (data.test_split) lives when it is another source, such as
a second .beton; by default data.source. Held-out data that is the training
data, or whose class names differ from the training split's, is an error.

out_dir: by default beside what is measured (runs/x/{command}, or
runs/x/{command}_random for random:; runs/x/export_{command} for an export
folder runs/x/export, which holds the export only); a folder that already holds {result}
is an error unless overwrite=true. Both are checked before any work."""

#: the data keys of the commands that measure frozen features (linear, knn); an empty source is
#: the data the backbone was pretrained on, an empty test_source is source
FROZEN_DATA = {
    "source": Key("", "the images to measure on; '' = those the backbone was pretrained on"),
    "test_source": Key("", "the source of data.test_split when it is another one (a .beton); '' = data.source"),
    "train_split": Key("train", "the split the classifier learns from (kNN: the bank it votes from)"),
    "test_split": Key("test", "the held-out split it is scored on"),
    "batch_size": Key(256, "images per batch of the frozen encoder", min=1),
    "num_workers": Key(2, "loader worker processes (ffcv: threads); 0 loads in the main process", min=0),
    "backend": Key("auto", "loader; auto: ffcv for a .beton; resident: each split held on the device",
                   choices=LOADER_BACKENDS),
}


def frozen_doc(doc: str, command: str, result: str) -> str:
    """A command's docstring with the shared help in place of ``{frozen}``."""
    return doc.replace("{frozen}", FROZEN_HELP.format(command=command, result=result))


def frozen_keys(command: str, result: str, train: dict[str, Key], **own: Any) -> dict[str, Any]:
    """The keys of a command that measures frozen features: where it writes, which backbone, the data
    (:data:`FROZEN_DATA`), ``own`` sections, and ``train`` with the device and progress keys added."""
    return {
        "out_dir": Key("", f"where {result} and config.yaml go; '' = beside the backbone (see above)"),
        "overwrite": Key(False, f"replace a finished {result} in out_dir"),
        "backbone": Key("", "a checkpoint or run folder, an export folder, or random:<...> (see above)"),
        **own,
        "data": dict(FROZEN_DATA),
        "train": {
            **train,
            "device": Key("auto", "auto (a GPU when there is one), cpu, cuda or cuda:<index>"),
            "progress": Key(True, "show progress bars"),
        },
    }
