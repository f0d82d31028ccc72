"""What `infoview linear` and `infoview knn` share: the data keys and their help."""
from __future__ import annotations

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
runs/x/{command}_random for random:); a folder that already holds {result}
is an error unless overwrite=true. Both are checked before any work."""

#: the data keys of the commands that measure frozen features (linear, knn); an empty source is
#: the data the backbone was pretrained on, an empty test_source is source
FROZEN_DATA = {"source": "", "test_source": "", "train_split": "train", "test_split": "test", "batch_size": 256,
               "num_workers": 2, "backend": "auto"}
