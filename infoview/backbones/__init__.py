"""The backbone side: the encoder a config or a checkpoint describes (encoder.py), ``backbone=`` specs
(spec.py), exports (export.py), frozen features (features.py) and the weighted kNN classifier (knn.py).

It sits above the parts (data, augment, models) and infoview.training (checkpoint files), below the tasks
(pretrain, eval, mi_bench).
"""
