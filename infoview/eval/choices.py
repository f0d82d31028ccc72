"""The evaluators' named choices, in a module that imports nothing: the command modules offer them as
their keys' choices (``infoview detect --help``) without importing torch, and the evaluators use them."""

TASKS = ("segm", "bbox")  # detect: Mask R-CNN or Faster R-CNN
SCHEDULES = ("step", "cosine")  # detect: training.optim.DECAYS
OPTIMIZERS = ("sgd", "adamw")  # detect, segment
PRECISIONS = ("fp32", "bf16")  # detect
HEADS = ("fcn", "deeplabv3")  # segment
