"""The training machinery's named choices, in a module that imports nothing: infoview.training.optim uses them,
and the command modules offer them as their keys' choices without importing torch."""

OPTIMIZERS = ("sgd", "lars", "adamw")  #: timm's optimisers that optim.name may name
FUSED = ("sgd", "adamw")  #: the optimizers torch has a fused kernel for
SCALING_RULES = ("linear", "sqrt", "none")  #: optim.lr_scaling: how the peak lr follows the global batch
DECAYS = ("step", "cosine")  #: what follows the warm-up in ``optim.warmup_decay_factors`` (detect's optim.schedule)
