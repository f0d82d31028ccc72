"""Pretraining's named choices, importing nothing: ``infoview pretrain --help`` offers these very lists without
importing torch, and :mod:`infoview.pretrain.building` checks against them."""

#: train.precision: the autocast dtype (auto: bf16 on a GPU, fp32 on a CPU)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
